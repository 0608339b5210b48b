"""The shards nursery: one supervised worker process per shard (see process.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from mdagent.config import Config
from mdagent.pipeline.metrics import Metrics
from mdagent.shards.assign import Shard
from mdagent.shards.process import WorkerProcess
from mdagent.shards.zygote import Zygote


class ShardSupervisor:
    """``config().agent.workers`` worker processes, each a :class:`WorkerProcess`.

    The count is read once, here: a change of ``workers`` needs a restart.
    """

    def __init__(
        self,
        config: Callable[[], Config],
        dsn: str,
        config_path: str | Path | None,
        metrics: Metrics,
        zygote: Zygote | None = None,
    ) -> None:
        count = config().agent.workers
        self.workers = [
            WorkerProcess(Shard(i, count), config, dsn, config_path, metrics, zygote)
            for i in range(count)
        ]
        self._metrics = metrics
        self._zygote = zygote

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every worker until each is stopped (stop())."""
        async with trio.open_nursery() as nursery:
            if self._zygote is not None:
                # Its reports (exit statuses) are read until every worker stopped.
                await nursery.start(self._zygote.run, name="shards:zygote")
            async with trio.open_nursery() as workers:
                for worker in self.workers:
                    await workers.start(worker.run, name=f"shard:{worker.shard.index}")
                task_status.started()
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        """Stop every worker gracefully; run() returns once all exited."""
        for worker in self.workers:
            worker.stop()

    def send_signal(self, signum: int) -> None:
        for worker in self.workers:
            worker.send_signal(signum)

    @property
    def killed(self) -> list[int]:
        """The workers that had to be killed at stop (past their grace)."""
        return [w.shard.index for w in self.workers if w.killed]

    @property
    def failed(self) -> list[int]:
        """The workers whose stop did not end in exit status 0 (a drain timeout, killed)."""
        return [w.shard.index for w in self.workers if w.final_status not in (0, None)]
