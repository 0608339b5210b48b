"""A venue mixing hostile frames of every kind into a stream of valid trades (issue 9).

The agent must never exit, store every valid trade exactly once, and keep
its memory bounded. ``MDAGENT_HOSTILE_FRAMES`` scales the run (default 2,000
hostile frames with 1,000 valid trades; the README quotes a 10,000-frame run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from mdagent.config import SourceConfig
from mdagent.testing.tape_venue import TapeItem, TapeVenue, binary_frame
from tests.agent_support import (
    binance_source,
    make_config,
    polygon_source,
    query,
    running_agent,
    wait_until,
)
from tests.hostile_corpus import hostile_frames

HOSTILE = int(os.environ.get("MDAGENT_HOSTILE_FRAMES", "2000"))
VALID = max(HOSTILE // 2, 10)
KEY_ENV = "MDAGENT_TEST_TAPE_KEY"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def valid_frame(provider: str, n: int) -> str:
    t = 1_764_345_600_000 + n
    if provider == "binance":
        data = {"e": "trade", "E": t, "s": "BTCUSDT", "t": n, "p": "30000.01", "q": "0.5"}
        return json.dumps({"stream": "btcusdt@trade", "data": {**data, "T": t, "m": False}})
    event = {"ev": "T", "sym": "QRST", "i": str(n), "x": 4, "p": 21.5, "s": 100, "t": t, "q": 7}
    return json.dumps([event])


def tape(provider: str) -> list[TapeItem]:
    items: list[TapeItem] = []
    bad = hostile_frames(provider, HOSTILE)
    per_valid = max(len(bad) // VALID, 1)
    for n in range(1, VALID + 1):
        items.append(valid_frame(provider, n))
        for frame in bad[(n - 1) * per_valid : n * per_valid]:
            # Binary frames: a text frame of invalid UTF-8 is refused by the
            # WebSocket layer itself (close 1007, tests/test_tapes_end_to_end.py).
            data = frame if isinstance(frame, bytes) else frame.encode("utf-8", "surrogatepass")
            items.append(binary_frame(data))
    return items


@pytest.mark.parametrize("provider", ["binance", "polygon"])
async def test_hostile_frames_never_stop_the_agent(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    monkeypatch.setenv(KEY_ENV, "tape-key")
    dsn = fresh_db_dsn
    venue = TapeVenue(provider, [tape(provider)])
    symbol = "BTCUSDT" if provider == "binance" else "QRST"

    def make_source(url: str) -> SourceConfig:
        if provider == "binance":
            return binance_source(url, [symbol], ["trade"])
        return polygon_source(url, [symbol], ["T"], api_key_env=KEY_ENV)

    def stored() -> int:
        return int(query(dsn, "SELECT count(*) FROM trades WHERE symbol = %s", symbol)[0][0])

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(venue.serve)
            source = make_source(url)
            async with running_agent(make_config([source]), dsn) as agent:
                before = rss_kib()
                await wait_until(lambda: stored() >= VALID, timeout=100)
                after = rss_kib()
                assert agent.supervisor is not None
                assert agent.supervisor.tasks[source.key].connects == 1  # never reconnected
            nursery.cancel_scope.cancel()
    expected = [str(n) if provider == "binance" else f"4::{n}" for n in range(1, VALID + 1)]
    ids = query(dsn, "SELECT trade_id FROM trades WHERE symbol = %s", symbol)
    assert sorted(r[0] for r in ids) == sorted(expected)  # each once
    assert query(dsn, "SELECT count(*) FROM dead_letter")[0][0] >= HOSTILE // 2
    print(f"{provider}: {HOSTILE} hostile frames, RSS {before} -> {after} KiB")
    # Bounded: hostile input leaves no state behind that grows with it.
    assert after - before < 64 * 1024
