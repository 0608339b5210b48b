"""A worker's share of the budgets that bound the recorder's memory.

``frames_channel_batches``, ``records_channel_batches`` and the dedup
windows' key total (``pipeline/dedup.py``) bound what the pipeline holds in
memory. They are the recorder's budgets, not each process's: with
``workers = N`` every worker runs a whole pipeline, so each gets 1/N of them
(at least 1). Without this split, two workers held two full sets: the
Polygon bench's peak summed PSS was 167.5 MB, 151.3 MB with it (issue 14).

``batch_max_rows`` is not split: it is also the size of a transaction, and
halving it cost two workers 11% of their committed rate in the same bench
(169,495 -> 150,311 rows/s, at 140.3 MB of PSS).
"""

from __future__ import annotations

import attrs

from mdagent.config import Config
from mdagent.pipeline.dedup import TOTAL_KEYS
from mdagent.shards.assign import Shard

__all__ = ["dedup_keys", "share", "worker_config"]


def share(total: int, shard: Shard) -> int:
    """``total`` split over ``shard.count`` workers: at least 1."""
    return max(1, total // shard.count)


def worker_config(config: Config, shard: Shard) -> Config:
    """``config`` with this worker's share of the memory budgets (sources untouched)."""
    if shard.count == 1:
        return config
    pipeline = config.pipeline
    return attrs.evolve(
        config,
        pipeline=attrs.evolve(
            pipeline,
            frames_channel_batches=share(pipeline.frames_channel_batches, shard),
            records_channel_batches=share(pipeline.records_channel_batches, shard),
        ),
    )


def dedup_keys(shard: Shard | None) -> int:
    """The dedup windows' key total for this process (all of it without workers)."""
    return TOTAL_KEYS if shard is None else share(TOTAL_KEYS, shard)
