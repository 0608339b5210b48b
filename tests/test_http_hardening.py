"""The HTTP endpoint under abuse: oversized requests, idle floods, a low file limit."""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
from pathlib import Path

import httpx
import pytest
import trio

from mdagent.pipeline import http
from mdagent.pipeline.health import Health
from mdagent.pipeline.http import HealthServer, connection_cap
from mdagent.pipeline.metrics import Metrics
from mdagent.rlimits import raise_file_limit
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import query
from tests.test_agent_process import logged_http_port
from tests.test_cli import REPO
from tests.test_health_http import get


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_oversized_request_line_gets_431() -> None:
    server = HealthServer(Health(), Metrics())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            request = b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            reply = await trio.to_thread.run_sync(raw_exchange, port, request)
            assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]
            garbage = await trio.to_thread.run_sync(raw_exchange, port, b"\x16\x03\x01junk\r\n\r\n")
            assert garbage.startswith(b"HTTP/1.1 400 "), garbage[:100]
            nursery.cancel_scope.cancel()


async def test_idle_flood_is_capped_and_scrapes_still_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More idle connections than the cap: the oldest are closed; /readyz answers at once."""
    # No idle connection ends by itself during the test: a scrape that waited
    # for room (rather than making it) would wait out get()'s timeout and fail,
    # however slow or fast the machine is.
    monkeypatch.setattr(http, "HEADER_TIMEOUT_S", 3600.0)
    server = HealthServer(Health(database_ok=True), Metrics(), max_connections=8)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(40)]
            await trio.testing.wait_all_tasks_blocked()
            assert server.open_connections <= 8
            assert (await get(port, "/readyz")).status_code == 200
            for stream in idle:
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_silent_client_is_dropped_after_the_header_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = HealthServer(Health(), Metrics())
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = await nursery.start(server.serve_on, listeners)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"GET /rea")  # and nothing more
        start = trio.current_time()
        assert await client.receive_some(100) == b""  # closed by the server
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.1)
        await client.aclose()
        nursery.cancel_scope.cancel()


def test_connection_cap_stays_well_under_the_file_limit() -> None:
    assert connection_cap(1024) == 128
    assert connection_cap(256) == 64
    assert connection_cap(20) == 5


async def test_process_collector() -> None:
    server = HealthServer(Health(), Metrics())
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        body = (await get(port, "/metrics")).text
        assert "process_resident_memory_bytes " in body
        assert "process_open_fds " in body
        nursery.cancel_scope.cancel()


def _limit_files_to_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
async def test_2000_idle_connections_under_1024_files(fresh_db_dsn: str, tmp_path: Path) -> None:
    """systemd's default file limit, 2,000 idle HTTP connections: ingest goes on,
    /readyz answers, and a stream that drops reconnects at once."""
    # This process holds the 2,000 client ends: it needs the descriptors the agent lacks.
    assert raise_file_limit()[1] > 2500
    venue = FakeBinance(symbols=["BTCUSDT"], seed=5, events_per_s=300)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[agent]\nlog_format = "json"\n[database]\ndsn = "{fresh_db_dsn}"\n'
        f'batch_max_delay_s = 0.05\n[http]\nlisten = "127.0.0.1:0"\n'
    )
    http_port = 0
    log_path = tmp_path / "agent.log"
    idle: list[socket.socket] = []

    def scrape(path: str) -> httpx.Response:
        # Generous: on a loaded machine an answer may be slow; a scrape locked
        # out by the flood never gets one at all.
        return httpx.get(f"http://127.0.0.1:{http_port}{path}", timeout=30)

    def trades() -> int:
        return int(query(fresh_db_dsn, "SELECT count(*) FROM trades")[0][0])

    async def poll(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        with trio.fail_after(timeout):
            while not await trio.to_thread.run_sync(predicate):
                await trio.sleep(0.1)

    def ready() -> bool:
        try:
            return scrape("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    async with trio.open_nursery() as nursery:
        ws_url, _ = await nursery.start(venue.serve)
        with cfg.open("a") as f:
            f.write(
                f'[[sources]]\nname = "b"\nprovider = "binance"\nsymbols = ["BTCUSDT"]\n'
                f'channels = ["trade"]\nws_url = "{ws_url}"\nreconnect_initial_s = 0.05\n'
            )
        with log_path.open("w") as log:
            agent = await trio.lowlevel.open_process(
                [sys.executable, "-m", "mdagent", "run", "--config", str(cfg)],
                stderr=log,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                preexec_fn=_limit_files_to_1024,
            )
        try:
            http_port = await trio.to_thread.run_sync(logged_http_port, log_path)
            await poll(ready, 60)

            def agent_fds() -> int:
                return len(os.listdir(f"/proc/{agent.pid}/fd"))

            fds_before = agent_fds()
            for _ in range(2000):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", http_port))
                idle.append(sock)
            # The agent's accept loop has met the flood: it holds about its
            # connection cap (128) of them.
            await poll(lambda: agent_fds() >= fds_before + 100, 60)

            assert await trio.to_thread.run_sync(ready)
            before = await trio.to_thread.run_sync(trades)
            await poll(lambda: trades() > before + 300, 60)

            metrics = (await trio.to_thread.run_sync(scrape, "/metrics")).text
            assert _metric(metrics, "process_open_fds") < 400
            assert _metric(metrics, "process_max_fds") == 1024

            venue.set_faults(disconnect_every_frames=50)
            await poll(lambda: '"stream.error"' in log_path.read_text(), 60)
            venue.set_faults(disconnect_every_frames=None)

            def reconnected() -> bool:
                text = scrape("/metrics").text
                return _metric(text, "mdagent_stream_connects_total") >= 2 and (
                    _metric(text, "mdagent_stream_connected") == 1.0
                )

            # Reconnecting needs a descriptor while 2,000 connections knock:
            # without the cap there is none, and it never reconnects.
            await poll(reconnected, 60)
            assert await trio.to_thread.run_sync(ready)
            assert "http.accept_failed" not in log_path.read_text()
        finally:
            for sock in idle:
                sock.close()
            agent.terminate()
            with trio.fail_after(30):
                await agent.wait()
        nursery.cancel_scope.cancel()
    text = log_path.read_text()
    assert agent.returncode == 0, text[-2000:]
    assert "Too many open files" not in text
    assert "Traceback" not in text
    events = [json.loads(line)["event"] for line in text.splitlines() if line.startswith("{")]
    assert "agent.drained" in events
