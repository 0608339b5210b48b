"""`mdagent status` against a running agent process and its database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from mdagent import status
from mdagent.config import load_config
from tests.test_agent_process import (
    count,
    logged_http_port,
    poll,
    venue_ws_url,
    write_config,
)
from tests.test_cli import REPO, mdagent

__all__ = ["venue_ws_url"]


def test_status_from_database_and_agent(
    fresh_db_dsn: str, venue_ws_url: str, tmp_path: Path
) -> None:
    cfg = tmp_path / "config.toml"
    write_config(cfg, fresh_db_dsn, 0, venue_ws_url, ["BTCUSDT"])
    with psycopg.connect(fresh_db_dsn) as conn:
        conn.execute(
            "INSERT INTO fetch_jobs (provider, symbol, channel, kind, reason, from_seq, to_seq)"
            " VALUES ('binance', 'BTCUSDT', 'trade', 'gap', 'id jump', 5, 9)"
        )
        conn.execute(
            "INSERT INTO dead_letter (provider, source, reason, payload, received_at)"
            " VALUES ('binance', 'b-btcusdt', 'bad json', '{', now())"
        )
    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "mdagent", "--config", str(cfg)],
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        # `mdagent status` finds the agent at the config's listen address: the
        # agent binds port 0 (no port picked beforehand can be taken meanwhile),
        # the config then names the port it bound.
        port = logged_http_port(tmp_path / "agent.log")
        write_config(cfg, fresh_db_dsn, port, venue_ws_url, ["BTCUSDT"])
        poll(lambda: count(fresh_db_dsn, "BTCUSDT") > 100)
        result = mdagent("status", "--config", str(cfg), "--json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)

        (stream,) = data["agent"]["streams"]
        assert stream["source"] == "b-btcusdt" and stream["connected"] is True
        assert stream["events_per_s"] > 0
        assert stream["last_event_age_s"] is not None and stream["last_event_age_s"] < 10
        (per_stream,) = data["agent"]["per_stream"]
        assert (per_stream["symbol"], per_stream["channel"], per_stream["state"]) == (
            "BTCUSDT",
            "trade",
            "ok",
        )
        assert per_stream["events_total"] > 0 and per_stream["last_receive_age_s"] < 10
        assert data["agent"]["problems"] == []

        (offset,) = data["offsets"]
        assert (offset["symbol"], offset["channel"]) == ("BTCUSDT", "trade")
        assert offset["last_seq"] > 100

        trades = next(t for t in data["tables"] if t["table"] == "trades")
        assert trades["exact"] and trades["rows"] >= 100
        assert trades["from"] <= trades["to"]

        assert {k: v for k, v in data["gaps"][0].items() if k != "oldest_age_s"} == {
            "kind": "gap",
            "reason": "id jump",
            "open": 1,
        }
        assert data["queue"]["pending"] == 1
        assert data["dead_letters"] == {"last_hour": 1, "total": 1}

        shown = mdagent("status", "--config", str(cfg))
        assert shown.returncode == 0, shown.stderr
        for heading in (
            "streams (agent",
            "streams per symbol",
            "offsets",
            "stored data",
            "open gaps",
            "dead letters: 1",
        ):
            assert heading in shown.stdout, shown.stdout
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        log.close()

    # The agent gone: the database part alone, and a note saying so.
    alone = mdagent("status", "--config", str(cfg))
    assert alone.returncode == 0, alone.stderr
    assert "agent: not reachable" in alone.stdout
    assert json.loads(mdagent("status", "--config", str(cfg), "--json").stdout)["agent"] is None


def test_big_tables_are_estimated_not_scanned(
    fresh_db_dsn: str, venue_ws_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above EXACT_COUNT_MAX rows: the planner's estimate and the non-empty day partitions."""
    cfg = tmp_path / "config.toml"
    write_config(cfg, fresh_db_dsn, 0, venue_ws_url, ["BTCUSDT"])
    agent = subprocess.Popen(
        [sys.executable, "-m", "mdagent", "--config", str(cfg)],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        poll(lambda: count(fresh_db_dsn, "BTCUSDT") > 200)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    monkeypatch.setattr(status, "EXACT_COUNT_MAX", 50)
    with psycopg.connect(fresh_db_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE trades")
        stored = count(fresh_db_dsn, "BTCUSDT")
        table = status._table(conn, "trades", "ts")
        today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date::text").fetchone()
    assert table["exact"] is False
    assert abs(table["rows"] - stored) <= stored * 0.2
    assert today is not None and table["from"] == table["to"] == today[0]


@pytest.mark.parametrize(
    "answer",
    [
        # Another service on the agent's port (here: the fake venue's REST 404).
        b'HTTP/1.1 404 Not Found\r\nContent-Length: 33\r\n\r\n{"code":-1000,"msg":"Not found."}',
        # A 200 whose body is no Prometheus text.
        b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n<html>hi</html>",
    ],
)
def test_something_else_on_the_agent_port_is_not_an_agent(
    fresh_db_dsn: str, tmp_path: Path, answer: bytes
) -> None:
    """Was a traceback (prometheus_client's ValueError parsing the 404 body)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    cfg = tmp_path / "config.toml"
    write_config(cfg, fresh_db_dsn, port, "ws://127.0.0.1:9", ["BTCUSDT"])
    try:
        shown = mdagent("status", "--config", str(cfg))
        as_json = mdagent("status", "--config", str(cfg), "--json")
    finally:
        listener.close()
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert f"127.0.0.1:{port}" in shown.stdout and "not mdagent" in shown.stdout, shown.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["agent"] is None


def test_an_agent_listening_on_every_ipv6_address_is_found(tmp_path: Path) -> None:
    """``http.listen = "[::]:port"``: status asked 127.0.0.1, which an IPv6-only
    listener (trio sets IPV6_V6ONLY) does not serve: "agent: not reachable"
    while the agent ran."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.bind(("::", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    metrics = b'mdagent_stream_connected{source="spot"} 1.0\n'
    readyz = b'{"ready": true, "problems": [], "streams": []}'

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                body = readyz if b"/readyz" in conn.recv(65536) else metrics
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    threading.Thread(target=serve, daemon=True).start()
    cfg = tmp_path / "config.toml"
    write_config(cfg, "postgresql://127.0.0.1:9/none", port, "ws://127.0.0.1:9", ["BTCUSDT"])
    text = cfg.read_text().replace(f"127.0.0.1:{port}", f"[::]:{port}")
    assert f"[::]:{port}" in text
    cfg.write_text(text)
    try:
        agent = status._agent(load_config(cfg), 0.0)
    finally:
        listener.close()
    assert isinstance(agent, dict), agent
    assert agent["url"] == f"http://[::1]:{port}/metrics"
    assert [s["source"] for s in agent["streams"]] == ["spot"]
