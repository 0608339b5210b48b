"""The shard rule: which worker process owns which streams, and the config checks around it."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from mdagent.config import Config, SourceConfig, max_workers, parse_config
from mdagent.errors import ConfigError
from mdagent.pipeline.agent import Agent
from mdagent.shards.assign import (
    Shard,
    ownership_problems,
    shard_of_source,
    shard_of_symbol,
    shard_sources,
)
from mdagent.shards.http import merge_families, worker_families


def documented(text: str, count: int) -> int:
    """The rule as README and assign.py state it, computed independently."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") % count


def binance(symbols: list[str], **kw: Any) -> SourceConfig:
    return SourceConfig(provider="binance", symbols=tuple(symbols), channels=("trade",), **kw)


def polygon(symbols: list[str], key_env: str, **kw: Any) -> SourceConfig:
    return SourceConfig(
        provider="polygon", symbols=tuple(symbols), channels=("T",), api_key_env=key_env, **kw
    )


SYMBOLS = [f"S{i}USDT" for i in range(40)]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_every_symbol_has_exactly_one_worker_by_the_documented_hash(count: int) -> None:
    sources = (binance(SYMBOLS[:25], name="a"), binance(SYMBOLS[20:], name="b"))
    shards = [shard_sources(sources, Shard(i, count)) for i in range(count)]
    for source in sources:
        for symbol in source.symbols:
            owners = [
                i
                for i, mine in enumerate(shards)
                for s in mine
                if s.name == source.name and symbol in s.symbols
            ]
            assert owners == [documented(f"binance\0{symbol}", count)]
    # A split source keeps its name; one with no symbol of a worker is left out.
    assert {s.name for mine in shards for s in mine} == {"a", "b"}


def test_a_symbol_lands_on_one_worker_whatever_its_spelling() -> None:
    # Binance records spell symbols upper case: btcusdt is BTCUSDT's stream.
    assert shard_of_symbol("binance", "btcusdt", 7) == shard_of_symbol("binance", "BTCUSDT", 7)
    assert shard_of_symbol("binance", "BTCUSDT", 7) == documented("binance\0BTCUSDT", 7)


def test_single_connection_sources_stay_whole_on_the_worker_of_their_key() -> None:
    sources = (polygon(["AAPL", "MSFT"], "KEY_A", name="p1"), binance(SYMBOLS, name="b"))
    for count in (2, 3):
        owner = shard_of_source(sources[0], count)
        assert owner == documented("polygon\0key\0KEY_A", count)
        for i in range(count):
            mine = [s for s in shard_sources(sources, Shard(i, count)) if s.provider == "polygon"]
            assert mine == ([sources[0]] if i == owner else [])


def test_one_worker_keeps_the_sources_as_they_are() -> None:
    sources = (binance(SYMBOLS), polygon(["*"], "K"))
    assert shard_sources(sources, Shard(0, 1)) == sources
    assert ownership_problems(sources, 1) == []


def _keys_on_two_workers() -> tuple[str, str]:
    """Two key variable names whose sources land on different workers of 2."""
    names = [f"KEY_{i}" for i in range(20)]
    first = names[0]
    other = next(
        n
        for n in names
        if documented(f"polygon\0key\0{n}", 2) != documented(f"polygon\0key\0{first}", 2)
    )
    return first, other


def test_a_stream_two_workers_would_write_is_a_config_error() -> None:
    a, b = _keys_on_two_workers()
    overlapping = (polygon(["AAPL", "MSFT"], a, name="p1"), polygon(["MSFT"], b, name="p2"))
    problems = ownership_problems(overlapping, 2)
    assert len(problems) == 1 and "'MSFT'" in problems[0] and "0, 1" in problems[0]
    # The wildcard brings every symbol: it overlaps any other source on another worker.
    wildcard = (polygon(["*"], a, name="p1"), polygon(["AAPL"], b, name="p2"))
    (problem,) = ownership_problems(wildcard, 2)
    assert "'AAPL'" in problem
    (problem,) = ownership_problems((polygon(["*"], a), polygon(["*"], b, name="p2")), 2)
    assert "'*'" in problem
    # Same key: same worker, no problem; disjoint symbols: no problem.
    assert (
        ownership_problems((polygon(["*"], a, name="p1"), polygon(["AAPL"], a, name="p2")), 2) == []
    )
    assert (
        ownership_problems((polygon(["AAPL"], a, name="p1"), polygon(["MSFT"], b, name="p2")), 2)
        == []
    )


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, secrets=False)
    return info.value.problems


GOOD = {"provider": "binance", "symbols": ["BTCUSDT"], "channels": ["trade"]}


@pytest.mark.parametrize("workers", [0, -1, max_workers() + 1])
def test_workers_out_of_range_is_one_line(workers: int) -> None:
    problems = _problems({"agent": {"workers": workers}, "sources": [GOOD]})
    assert problems == [
        f"agent.workers: must be 1 to {max_workers()} (4 per core, {os.cpu_count()} cores here),"
        f" got {workers}"
    ]


def test_workers_in_range_and_the_overlap_check_in_the_config() -> None:
    assert parse_config({"agent": {"workers": max_workers()}, "sources": [GOOD]}).agent.workers > 1
    a, b = _keys_on_two_workers()
    sources = [
        {
            "provider": "polygon",
            "symbols": ["AAPL"],
            "channels": ["T"],
            "api_key_env": a,
            "name": "x",
        },
        {
            "provider": "polygon",
            "symbols": ["AAPL"],
            "channels": ["Q"],
            "api_key_env": b,
            "name": "y",
        },
    ]
    problems = _problems({"agent": {"workers": 2}, "sources": sources})
    assert len(problems) == 1 and problems[0].startswith("sources: polygon symbol 'AAPL'")


async def test_a_reload_changing_workers_is_restart_only() -> None:
    config = parse_config({"agent": {"workers": 2}, "sources": [GOOD]})
    agent = Agent(config, "postgresql://unused/x", handle_signals=False)
    assert agent.shards is not None and len(agent.shards.workers) == 2
    new = parse_config({"agent": {"workers": 3}, "sources": [GOOD, {**GOOD, "name": "n"}]})
    with capture_logs() as logs:
        await agent.apply_config(new)
    assert agent.config.agent.workers == 2
    assert len(agent.config.sources) == 2
    partial = [e for e in logs if e["event"] == "agent.reload_partial"]
    assert partial and partial[0]["needs_restart"] == ["agent.workers"]


def test_a_worker_agent_runs_only_its_shard() -> None:
    config = Config(sources=(binance(SYMBOLS, name="b"),))
    for i in range(3):
        agent = Agent(config, "postgresql://unused/x", handle_signals=False, shard=Shard(i, 3))
        assert not agent.sharded and agent.shards is None
        (mine,) = agent.config.sources
        assert all(shard_of_symbol("binance", s, 3) == i for s in mine.symbols)


WORKER_TEXT = """# HELP mdagent_rows_committed_total Rows committed by the writer
# TYPE mdagent_rows_committed_total counter
mdagent_rows_committed_total{table="trades"} 5.0
# HELP mdagent_ready 1 while /readyz is OK
# TYPE mdagent_ready gauge
mdagent_ready 1.0
"""


def test_merged_metrics_label_each_worker_and_keep_one_family_per_name() -> None:
    parent = list(text_string_to_metric_families(WORKER_TEXT.replace("5.0", "0.0")))
    merged = merge_families(
        [parent, list(worker_families(WORKER_TEXT, 0)), list(worker_families(WORKER_TEXT, 1))]
    )
    assert [f.name for f in merged] == ["mdagent_rows_committed", "mdagent_ready"]
    rows = merged[0].samples
    assert [(s.labels.get("worker"), s.value) for s in rows] == [
        (None, 0.0),
        ("0", 5.0),
        ("1", 5.0),
    ]


async def test_readyz_names_a_worker_that_is_not_running() -> None:
    """The parent's /readyz with its workers not (yet) running: 503, one line per worker."""
    config = parse_config({"agent": {"workers": 2}, "sources": [GOOD]})
    agent = Agent(config, "postgresql://unused/x", handle_signals=False)
    agent.health.database_ok = True
    status, _, body = await agent.http.answer("GET", "/readyz")
    view = json.loads(body)
    assert status == 503 and not view["ready"]
    assert view["problems"] == [
        "worker 0: not running (restarted 0 times)",
        "worker 1: not running (restarted 0 times)",
    ]
    assert [w["worker"] for w in view["workers"]] == [0, 1]
    status, _, body = await agent.http.answer("GET", "/metrics")
    assert status == 200 and b"mdagent_ready 0.0" in body
