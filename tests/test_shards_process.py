"""Worker processes ([agent] workers = 2) as systemd runs them: the real console
script, a fake Binance venue in its own process, a real database.

Each symbol is written by the one worker the shard rule names; a worker killed
with SIGKILL is started again and its streams catch up (the gap it left is
backfilled), so every trade is stored exactly once; SIGHUP reaches the workers;
/readyz and /metrics cover them; neither SIGTERM nor SIGKILL of the parent
leaves a worker behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mdagent.shards.assign import shard_of_symbol
from mdagent.shards.process import worker_command
from tests.agent_support import query
from tests.test_agent_process import count, get, poll

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"]
ADDED = "DOGEUSDT"
# Generous: the machine running the suite is shared and busy.
WAIT_S = 90.0


@pytest.fixture
def venue() -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mdagent", "fake-venue", "binance",
            "--symbols", ",".join([*SYMBOLS, ADDED]), "--rate", "300",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(10)


def write_config(path: Path, dsn: str, port: int, urls: dict[str, str], symbols: list[str]) -> None:
    quoted = ", ".join(f'"{s}"' for s in symbols)
    path.write_text(
        f'[agent]\nlog_format = "json"\nshutdown_grace_s = 10\nworkers = 2\n'
        f'[database]\ndsn = "{dsn}"\nbatch_max_delay_s = 0.05\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
        f'[[sources]]\nname = "b"\nprovider = "binance"\nsymbols = [{quoted}]\n'
        f'channels = ["trade"]\nws_url = "{urls["ws_url"]}"\nrest_url = "{urls["rest_url"]}"\n'
        "instruments = false\nreconnect_initial_s = 0.05\nreconnect_max_s = 0.5\n"
    )


def parent_http_port(log_path: Path) -> int:
    """The port the parent (told to listen on port 0) bound: its "http.listening"
    line, the one without "worker" (each worker logs its own loopback port)."""
    found: list[int] = []

    def listening() -> bool:
        for line in log_path.read_text().splitlines():
            if '"http.listening"' in line and '"worker"' not in line:
                found.append(int(json.loads(line)["port"]))
                return True
        return False

    poll(listening, WAIT_S)
    return found[0]


def readyz(port: int) -> dict | None:  # type: ignore[type-arg]
    r = get(port, "/readyz")
    return None if r is None else r.json()


def worker_pids(port: int) -> list[int]:
    view = readyz(port)
    assert view is not None
    return [w["pid"] for w in view["workers"] if w["pid"] is not None]


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by its parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def events_by_worker(port: int) -> dict[str, set[str]]:
    """symbol -> the workers whose mdagent_stream_events series for it is non-zero."""
    r = get(port, "/metrics")
    assert r is not None
    found: dict[str, set[str]] = {}
    for line in r.text.splitlines():
        if line.startswith("mdagent_stream_events_total{"):
            labels = dict(
                kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            if float(line.rsplit(" ", 1)[1]) > 0:
                symbol, worker = labels["symbol"].strip('"'), labels["worker"].strip('"')
                found.setdefault(symbol, set()).add(worker)
    return found


def contiguous(dsn: str, symbol: str) -> bool:
    ids = [
        int(r[0])
        for r in query(
            dsn, "SELECT trade_id::bigint FROM trades WHERE symbol = %s ORDER BY 1", symbol
        )
    ]
    return bool(ids) and ids == list(range(ids[0], ids[-1] + 1))


def start_agent(cfg: Path, log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mdagent", "--config", str(cfg)],
        stderr=log_path.open("w"),
        env=os.environ.copy(),
    )


@contextlib.contextmanager
def agent_running(cfg: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """start_agent; killed on the way out if it still runs."""
    agent = start_agent(cfg, log_path)
    try:
        yield agent
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_two_workers_own_their_symbols_restart_reload_and_stop(
    fresh_db_dsn: str, venue: dict[str, str], tmp_path: Path
) -> None:
    dsn = fresh_db_dsn
    port = 0  # the agent picks; read from its log
    cfg = tmp_path / "config.toml"
    write_config(cfg, dsn, port, venue, SYMBOLS)
    agent = start_agent(cfg, tmp_path / "agent.log")
    pids: list[int] = []
    try:
        port = parent_http_port(tmp_path / "agent.log")
        poll(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 200, WAIT_S)
        view = readyz(port)
        assert view is not None
        assert [w["worker"] for w in view["workers"]] == [0, 1]
        assert all(w["ready"] for w in view["workers"])
        # /readyz lists every stream once, with the worker the shard rule names.
        assert sorted((s["symbol"], s["worker"]) for s in view["streams"]) == sorted(
            (s, shard_of_symbol("binance", s, 2)) for s in SYMBOLS
        )
        pids = worker_pids(port)
        assert len(pids) == 2 and agent.pid not in pids
        poll(lambda: all(count(dsn, s) > 50 for s in SYMBOLS), WAIT_S)
        owners = events_by_worker(port)
        assert owners == {s: {str(shard_of_symbol("binance", s, 2))} for s in SYMBOLS}

        # kill -9 of one worker: it is started again, its streams catch up.
        victim = pids[0]
        before = {s: count(dsn, s) for s in SYMBOLS}
        os.kill(victim, signal.SIGKILL)
        poll(lambda: not alive(victim), WAIT_S)
        poll(
            lambda: (
                (v := readyz(port)) is not None
                and v["ready"]
                and v["workers"][0]["restarts"] == 1
                and v["workers"][0]["pid"] not in (None, victim)
            ),
            WAIT_S,
        )
        poll(lambda: all(count(dsn, s) > before[s] + 50 for s in SYMBOLS), WAIT_S)

        # SIGHUP adding a symbol: the worker the rule names records it.
        write_config(cfg, dsn, 0, venue, [*SYMBOLS, ADDED])
        agent.send_signal(signal.SIGHUP)
        poll(lambda: count(dsn, ADDED) > 50, WAIT_S)
        assert events_by_worker(port)[ADDED] == {str(shard_of_symbol("binance", ADDED, 2))}

        # Any hole the killed worker left (what it read but had not committed;
        # the fake's market waits for its subscribers, so how much depends on
        # the moment of the kill) is backfilled: every id once, none missing.
        poll(lambda: all(contiguous(dsn, s) for s in SYMBOLS), WAIT_S)
        pids = worker_pids(port)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    poll(lambda: not any(alive(p) for p in pids), 30)
    lines = [
        json.loads(line)
        for line in (tmp_path / "agent.log").read_text().splitlines()
        if line.startswith("{")
    ]
    events = [(line["event"], line.get("worker")) for line in lines]
    assert ("agent.drained", None) in events
    assert ("agent.drained", 0) in events and ("agent.drained", 1) in events
    for symbol in [*SYMBOLS, ADDED]:
        stored, distinct = query(
            dsn, "SELECT count(*), count(DISTINCT trade_id) FROM trades WHERE symbol = %s", symbol
        )[0]
        assert stored == distinct
        offset = query(
            dsn,
            "SELECT last_seq FROM stream_offsets WHERE symbol = %s AND channel = 'trade'",
            symbol,
        )
        top = query(dsn, "SELECT max(trade_id::bigint) FROM trades WHERE symbol = %s", symbol)
        assert offset == top


def test_a_worker_stopped_alone_restarts_and_kill_9_of_the_parent_leaves_none(
    fresh_db_dsn: str, venue: dict[str, str], tmp_path: Path
) -> None:
    cfg = tmp_path / "config.toml"
    write_config(cfg, fresh_db_dsn, 0, venue, SYMBOLS)
    agent = start_agent(cfg, tmp_path / "agent.log")
    try:
        port = parent_http_port(tmp_path / "agent.log")
        poll(lambda: readyz(port) is not None and len(worker_pids(port)) == 2, WAIT_S)
        # Forked from the zygote, a child of the parent (shards/zygote.py).
        zygote = parent_of(worker_pids(port)[0])
        assert zygote != agent.pid and parent_of(zygote) == agent.pid
        # A worker stopped on its own (SIGTERM to it alone: it drains, exit 0)
        # is not a stop of the recorder: it is started again.
        stopped = worker_pids(port)[1]
        os.kill(stopped, signal.SIGTERM)
        poll(
            lambda: (
                (v := readyz(port)) is not None
                and v["workers"][1]["restarts"] == 1
                and v["workers"][1]["pid"] not in (None, stopped)
            ),
            WAIT_S,
        )
        poll(lambda: len(worker_pids(port)) == 2, WAIT_S)
        pids = worker_pids(port)
        assert [parent_of(p) for p in pids] == [zygote, zygote]
        agent.kill()
        agent.wait()
        poll(lambda: not any(alive(p) for p in [*pids, zygote]), WAIT_S)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_once_the_zygote_is_gone_workers_are_exec_d_and_the_stop_says_it_cannot_tell(
    fresh_db_dsn: str, venue: dict[str, str], tmp_path: Path
) -> None:
    """A zygote killed (OOM killer, kill -9): the workers it forked run on,
    their exits seen through their pidfds; new workers are exec'd. Their exit
    statuses were the zygote's to report: at the stop they are unknown, which
    the parent reports as a failed drain (exit 1) rather than guess."""
    cfg = tmp_path / "config.toml"
    write_config(cfg, fresh_db_dsn, 0, venue, SYMBOLS)
    log_path = tmp_path / "agent.log"
    with agent_running(cfg, log_path) as agent:
        port = parent_http_port(log_path)
        poll(lambda: readyz(port) is not None and len(worker_pids(port)) == 2, WAIT_S)
        forked = worker_pids(port)
        zygote = parent_of(forked[0])
        assert zygote != agent.pid
        os.kill(zygote, signal.SIGKILL)
        poll(lambda: not alive(zygote), WAIT_S)
        os.kill(forked[0], signal.SIGKILL)
        poll(
            lambda: (
                (v := readyz(port)) is not None
                and v["ready"]
                and v["workers"][0]["restarts"] == 1
                and v["workers"][0]["pid"] not in (None, forked[0])
            ),
            WAIT_S,
        )
        pids = worker_pids(port)
        assert parent_of(pids[0]) == agent.pid  # exec'd by the parent itself
        assert pids[1] == forked[1]
        agent.send_signal(signal.SIGTERM)
        status = agent.wait(60)
    assert status == 1
    poll(lambda: not any(alive(p) for p in pids), 30)
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    events = {x["event"] for x in lines}
    assert "shard.zygote_exited" in events
    drained = sorted(str(x.get("worker")) for x in lines if x["event"] == "agent.drained")
    assert drained == ["0", "1"]  # both workers drained; the parent could not tell for 1
    [timeout] = [
        x for x in lines if x["event"] == "agent.drain_timeout" and x.get("worker") is None
    ]
    assert timeout["failed_workers"] == [1] and timeout["killed_workers"] == []


def test_ctrl_c_reaching_the_whole_process_group_drains_every_worker_once(
    fresh_db_dsn: str, venue: dict[str, str], tmp_path: Path
) -> None:
    """SIGINT to parent and workers at once (a terminal's Ctrl-C): each drains, exit 0.

    The parent asks its workers to stop by closing their stdin, not with a
    signal: a second signal would make a worker give up its drain.
    """
    cfg = tmp_path / "config.toml"
    write_config(cfg, fresh_db_dsn, 0, venue, SYMBOLS)
    log_path = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "mdagent", "--config", str(cfg)],
        stderr=log_path.open("w"),
        start_new_session=True,
    )
    try:
        port = parent_http_port(log_path)
        poll(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 200, WAIT_S)
        poll(lambda: all(count(fresh_db_dsn, s) > 20 for s in SYMBOLS), WAIT_S)
        pids = worker_pids(port)
        os.killpg(agent.pid, signal.SIGINT)
        assert agent.wait(60) == 0
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    poll(lambda: not any(alive(p) for p in pids), 30)
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    drained = sorted(str(x.get("worker")) for x in lines if x["event"] == "agent.drained")
    assert drained == ["0", "1", "None"]
    assert not [x for x in lines if x["event"] in ("agent.forced_exit", "agent.drain_timeout")]


def catches_sighup(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGHUP (its SigCgt mask, bit 0)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def test_a_starting_worker_survives_a_sighup() -> None:
    """The parent passes a reload on to every running worker, one still starting
    too (waiting for its hello here): recorded, never the end of the process."""
    proc = subprocess.Popen(
        worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        poll(lambda: catches_sighup(proc.pid), WAIT_S)
        proc.send_signal(signal.SIGHUP)
        assert proc.stdin is not None
        proc.stdin.close()  # no hello: it ends as when its parent is gone
        assert proc.wait(WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def lock_waiters(dsn: str) -> int:
    """Sessions waiting for a lock on stream_offsets."""
    rows = query(
        dsn,
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'stream_offsets'::regclass",
    )
    return int(rows[0][0])


def test_a_second_signal_ends_a_parent_whose_workers_hang_in_a_write(
    fresh_db_dsn: str, venue: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM, then SIGINT (a forced exit) while every worker's write waits for a
    lock held elsewhere: the parent kills its workers and exits 1, leaving none.

    Before, with workers forked from the zygote, the parent waited for ever for
    the zygote's report of the killed workers' exit, whose reader the same
    forced exit had cancelled (found by trying it, stop 11).
    """
    cfg = tmp_path / "config.toml"
    write_config(cfg, fresh_db_dsn, 0, venue, SYMBOLS)
    log_path = tmp_path / "agent.log"
    blocker = psycopg.connect(fresh_db_dsn)
    try:
        with agent_running(cfg, log_path) as agent:
            port = parent_http_port(log_path)
            poll(lambda: all(count(fresh_db_dsn, s) > 20 for s in SYMBOLS), WAIT_S)
            pids = worker_pids(port)
            assert all(parent_of(p) != agent.pid for p in pids)  # forked by the zygote
            blocker.execute("LOCK TABLE stream_offsets IN ACCESS EXCLUSIVE MODE")
            # Every worker's next batch now waits for the lock (its offsets).
            poll(lambda: lock_waiters(fresh_db_dsn) >= len(pids), WAIT_S)
            agent.send_signal(signal.SIGTERM)
            poll(lambda: '"agent.draining"' in log_path.read_text(), WAIT_S)
            agent.send_signal(signal.SIGINT)
            assert agent.wait(60) == 1
    finally:
        blocker.close()
    poll(lambda: not any(alive(p) for p in pids), 30)
    events = [
        json.loads(x)["event"] for x in log_path.read_text().splitlines() if x.startswith("{")
    ]
    assert "agent.forced_exit" in events
