"""The real console script as systemd runs it: readiness, SIGHUP reload, SIGTERM drain.

Both the fake venue and the agent are separate processes here, so signals,
exit codes and the HTTP endpoints are exercised exactly as in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent_support import query


@pytest.fixture
def venue_ws_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mdagent",
            "fake-venue",
            "binance",
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--rate",
            "400",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        yield urls["ws_url"]
    finally:
        proc.terminate()
        proc.wait(10)


def write_config(path: Path, dsn: str, http_port: int, ws_url: str, sources: list[str]) -> None:
    text = (
        f'[agent]\nlog_format = "json"\nshutdown_grace_s = 10\n'
        f'[database]\ndsn = "{dsn}"\nbatch_max_delay_s = 0.05\n'
        f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
    )
    for symbol in sources:
        text += (
            f'[[sources]]\nname = "b-{symbol.lower()}"\nprovider = "binance"\nsymbols = ["{symbol}"]\n'
            f'channels = ["trade"]\nws_url = "{ws_url}"\nbackfill = false\n'
        )
    path.write_text(text)


def poll(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


def logged_http_port(log_path: Path, timeout: float = 60.0) -> int:
    """The port an agent told to listen on port 0 bound, from its JSON log's
    "http.listening" line (a port picked free by the test and bound later by the
    agent could be taken in between by anything else on the machine)."""
    ports: list[int] = []

    def listening() -> bool:
        for line in log_path.read_text().splitlines():
            if '"http.listening"' in line:
                ports.append(int(json.loads(line)["port"]))
                return True
        return False

    poll(listening, timeout)
    return ports[0]


def get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)
    except httpx.TransportError:
        return None


def count(dsn: str, symbol: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM trades WHERE symbol = %s", symbol)[0][0])


def test_readiness_reload_and_sigterm_drain(
    fresh_db_dsn: str, venue_ws_url: str, tmp_path: Path
) -> None:
    dsn = fresh_db_dsn
    cfg = tmp_path / "config.toml"
    write_config(cfg, dsn, 0, venue_ws_url, ["BTCUSDT"])
    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "mdagent", "--config", str(cfg)], stderr=log, env=os.environ.copy()
    )
    try:
        port = logged_http_port(tmp_path / "agent.log")
        poll(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 200)
        poll(lambda: count(dsn, "BTCUSDT") > 100)

        # SIGHUP with a bad config: rejected, the agent keeps running unchanged.
        cfg.write_text(cfg.read_text() + "\nbogus = 1\n")
        agent.send_signal(signal.SIGHUP)
        poll(lambda: "agent.reload_rejected" in (tmp_path / "agent.log").read_text())
        assert agent.poll() is None

        # SIGHUP with a value the code could run but that would open a new
        # connection every second: refused like check-config and start refuse
        # it (before, it was applied: agent.reloaded).
        write_config(cfg, dsn, 0, venue_ws_url, ["BTCUSDT"])
        cfg.write_text(cfg.read_text() + "max_connection_age_s = 1e-9\n")
        agent.send_signal(signal.SIGHUP)
        refused = "sources[0].max_connection_age_s: must be 60 to 604,800 s"
        poll(lambda: refused in (tmp_path / "agent.log").read_text())
        assert agent.poll() is None
        assert '"agent.reloaded"' not in (tmp_path / "agent.log").read_text()

        # SIGHUP with a FIFO where the config was: the reload's open() blocked
        # for good; now refused at once, the agent unchanged.
        cfg.unlink()
        os.mkfifo(cfg)
        agent.send_signal(signal.SIGHUP)
        poll(
            lambda: (
                "a FIFO (named pipe), not a regular file" in (tmp_path / "agent.log").read_text()
            )
        )
        assert agent.poll() is None
        cfg.unlink()

        # SIGHUP adding a source: the new stream starts, the old one is untouched.
        write_config(cfg, dsn, 0, venue_ws_url, ["BTCUSDT", "ETHUSDT"])
        agent.send_signal(signal.SIGHUP)
        poll(lambda: count(dsn, "ETHUSDT") > 100)
        metrics = get(port, "/metrics")
        assert metrics is not None
        assert 'mdagent_stream_connects_total{source="b-btcusdt"} 1.0' in metrics.text

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
        log.close()
    lines = [
        json.loads(line)
        for line in (tmp_path / "agent.log").read_text().splitlines()
        if line.startswith("{")
    ]
    events = [line["event"] for line in lines]
    assert "agent.drained" in events and "agent.stopped" in events
    # Drained: every stored trade is covered by the committed offset, and no
    # id between the first and the last stored one is missing.
    for symbol in ("BTCUSDT", "ETHUSDT"):
        ids = [
            int(r[0])
            for r in query(
                dsn, "SELECT trade_id::bigint FROM trades WHERE symbol=%s ORDER BY 1", symbol
            )
        ]
        offset = query(
            dsn, "SELECT last_seq FROM stream_offsets WHERE symbol=%s AND channel='trade'", symbol
        )
        assert offset == [(ids[-1],)]
        assert ids == list(range(ids[0], ids[-1] + 1))
