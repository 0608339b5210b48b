"""Type=notify as systemd sees it: a real NOTIFY_SOCKET, the real agent process.

READY=1 after migrate and streams; RELOADING=1 (with MONOTONIC_USEC) then
READY=1 around a SIGHUP; STOPPING=1 on SIGTERM; WATCHDOG=1 every
WatchdogSec/2, withheld while a database write hangs (a table lock held by
the test makes the writer's COPY wait).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tests.test_agent_process import count, poll, venue_ws_url, write_config
from tests.test_cli import REPO

__all__ = ["venue_ws_url"]  # the fake venue process fixture, shared

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s; a write over 1 s is "stuck"


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))

    def states(self) -> list[str]:
        """Every message but the watchdog pings, in order."""
        return [m for _, m in self.drain() if m != "WATCHDOG=1"]

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for t, m in self.drain() if m == "WATCHDOG=1" and start <= t <= end)


def test_notify_order_and_watchdog(fresh_db_dsn: str, venue_ws_url: str, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "config.toml"
    write_config(cfg, fresh_db_dsn, 0, venue_ws_url, ["BTCUSDT"])
    log_path = tmp_path / "agent.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
    }
    with log_path.open("w") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "mdagent", "--config", str(cfg)], stderr=log, env=env
        )
    try:
        poll(lambda: "READY=1" in notify.states())
        poll(lambda: count(fresh_db_dsn, "BTCUSDT") > 50)
        now = time.monotonic()
        poll(lambda: notify.pings_between(now, now + 60) >= 2, 60)

        agent.send_signal(signal.SIGHUP)
        poll(lambda: notify.states()[-1:] == ["READY=1"] and len(notify.states()) == 3)
        reloading = notify.states()[1]
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        usec = int(reloading.split("MONOTONIC_USEC=")[1])
        assert abs(usec / 1e6 - time.monotonic()) < 60  # CLOCK_MONOTONIC, in µs

        # The writer hangs: its COPY into trades waits for this lock.
        with psycopg.connect(fresh_db_dsn) as locker:
            locker.execute("LOCK TABLE trades IN ACCESS EXCLUSIVE MODE")
            poll(lambda: "watchdog.withheld" in log_path.read_text(), 60)
            # The pinger logs "withheld" instead of a ping, in one task: every
            # ping sent before it is already in the socket. Drop those, then
            # no ping may come for four intervals. (Timestamps are taken when
            # the test reads a message, so the pings are counted by reading
            # before and after the window, not by their stamps.)
            pings_before = len(notify.drain())
            time.sleep(2.0)
            assert [m for _, m in notify.drain()[pings_before:]] == []
            locker.rollback()
        resumed = time.monotonic()
        poll(lambda: notify.pings_between(resumed, resumed + 120) >= 2, 60)

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
    assert notify.states() == [
        "READY=1",
        notify.states()[1],
        "READY=1",
        "STOPPING=1",
    ]
    events = [json.loads(line)["event"] for line in log_path.read_text().splitlines()]
    assert events.index("watchdog.withheld") < events.index("watchdog.resumed")
