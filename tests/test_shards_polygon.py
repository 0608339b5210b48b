"""Worker processes with a single-connection provider: each Polygon source stays whole
on the worker its key names, one connection per key, and every event is stored once.

The parent Agent runs in the test's loop (as the bench runs it); its workers are
real child processes connecting to the fake venue served here.
"""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from mdagent.config import AgentConfig, HttpConfig
from mdagent.shards.assign import shard_of_source
from mdagent.testing.polygon.venue import FakePolygon
from tests.agent_support import make_config, polygon_source, running_agent, wait_until
from tests.test_agent_polygon import market_clock, stored_as_sent

KEYS = ("shard-key-a", "shard-key-b")
GROUPS = (["AAPL", "MSFT"], ["SPY", "IBM", "GTE"])
CHANNELS = ["T", "Q"]


def key_envs() -> tuple[str, str]:
    """Two variable names whose sources land on workers 0 and 1 of 2."""
    probe = polygon_source("ws://x", ["AAPL"], CHANNELS, api_key_env="")
    names = [f"MDAGENT_TEST_SHARD_KEY_{i}" for i in range(50)]
    on = [
        next(n for n in names if shard_of_source(attrs.evolve(probe, api_key_env=n), 2) == w)
        for w in (0, 1)
    ]
    return on[0], on[1]


async def test_polygon_sources_stay_whole_one_per_worker_and_store_once(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    envs = key_envs()
    for env, key in zip(envs, KEYS, strict=True):
        monkeypatch.setenv(env, key)  # the workers inherit the environment
    tickers = [t for group in GROUPS for t in group]
    venue = FakePolygon(
        symbols=tickers,
        api_key=KEYS[0],
        extra_api_keys=[KEYS[1]],
        seed=11,
        events_per_s=400,
        clock_ns=market_clock(),
    )
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            ws_url, _rest_url = await nursery.start(venue.serve)
            sources = [
                polygon_source(ws_url, group, CHANNELS, api_key_env=env, name=f"p{i}")
                for i, (group, env) in enumerate(zip(GROUPS, envs, strict=True))
            ]
            config = attrs.evolve(
                make_config(sources),
                agent=AgentConfig(workers=2),
                http=HttpConfig(listen="127.0.0.1:0"),
            )
            async with running_agent(config, fresh_db_dsn) as agent:
                sent = venue.truth

                def enough() -> bool:
                    return all(len(sent.trades(t)) > 5 and len(sent.quotes(t)) > 5 for t in tickers)

                await wait_until(enough, timeout=60)
                venue.stall(3600)  # the venue goes quiet; the workers catch up
                problems = await stored_as_sent(fresh_db_dsn, venue, tickers, CHANNELS, 60)
                async with httpx.AsyncClient(timeout=10) as client:
                    reply = await client.get(f"http://127.0.0.1:{agent.http.port}/readyz")
            nursery.cancel_scope.cancel()
    assert problems == []
    view = reply.json()
    assert reply.status_code == 200 and view["ready"], view["problems"]
    # Each source's streams are all in the worker its key names.
    where = {(s["symbol"], s["worker"]) for s in view["streams"]}
    assert where == {(t, i) for i, group in enumerate(GROUPS) for t in group}
    # One connection per key: the venue never refused a second one.
    assert venue.counters["max_connections"] == 0
