"""Each worker gets 1/N of the memory budgets, so N workers hold what one process would."""

from __future__ import annotations

from mdagent.config import AgentConfig, Config, DatabaseConfig, PipelineConfig, SourceConfig
from mdagent.pipeline.agent import Agent
from mdagent.pipeline.dedup import TOTAL_KEYS
from mdagent.shards.assign import Shard
from mdagent.shards.budget import dedup_keys, worker_config


def config(workers: int) -> Config:
    source = SourceConfig(provider="binance", symbols=("BTCUSDT", "ETHUSDT"), channels=("trade",))
    return Config(
        sources=(source,),
        agent=AgentConfig(workers=workers),
        database=DatabaseConfig(batch_max_rows=5000),
        pipeline=PipelineConfig(frames_channel_batches=16, records_channel_batches=4),
    )


def test_three_workers_share_each_budget() -> None:
    mine = worker_config(config(3), Shard(1, 3))
    assert mine.database.batch_max_rows == 5000  # a transaction's size: not split
    assert (mine.pipeline.frames_channel_batches, mine.pipeline.records_channel_batches) == (5, 1)
    assert dedup_keys(Shard(1, 3)) == TOTAL_KEYS // 3
    assert dedup_keys(None) == TOTAL_KEYS


def test_a_share_is_never_below_one() -> None:
    tiny = worker_config(config(8), Shard(0, 8))
    assert tiny.pipeline.records_channel_batches == 1  # 4 // 8 would be 0: a channel of none


def test_a_worker_agent_runs_its_share_and_the_parent_the_whole() -> None:
    whole = config(2)
    worker = Agent(whole, "host=/nonexistent", handle_signals=False, shard=Shard(0, 2))
    parent = Agent(whole, "host=/nonexistent", handle_signals=False)
    assert worker.config.pipeline.frames_channel_batches == 8
    assert worker.config.pipeline.records_channel_batches == 2
    assert parent.config.pipeline.frames_channel_batches == 16
