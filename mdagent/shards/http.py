"""The parent's /readyz and /metrics with workers: its own state and every worker's.

Each worker serves the agent's endpoints on a loopback port it reports to
the parent (``child.py``). A scrape of the parent asks every running worker
at once (at most ``WORKER_TIMEOUT_S``) and answers with the union:

- ``/readyz``: ready when the parent is (database, instrument problems,
  shutting down) and every worker runs and is ready; each worker problem is
  prefixed ``worker <i>:``, each stream carries ``"worker": i``, and
  ``"workers"`` lists pid, restarts and readiness per worker.
- ``/metrics``: the parent's series as they are, every worker's series with
  a ``worker="<i>"`` label (so ``sum without (worker)`` gives the recorder's
  totals; process_* series are per process). ``mdagent_ready`` of the parent
  is the whole recorder's readiness.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence

import httpx
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from mdagent.pipeline.health import Health
from mdagent.pipeline.http import HealthServer
from mdagent.pipeline.metrics import Metrics
from mdagent.shards.process import WorkerProcess
from mdagent.shards.supervisor import ShardSupervisor

# A worker answers from memory; past this it counts as not answering.
WORKER_TIMEOUT_S = 3.0


async def fetch_from_workers(
    workers: Sequence[WorkerProcess], path: str, client: httpx.AsyncClient | None = None
) -> list[tuple[int, str] | str]:
    """GET ``path`` of every worker at once: (status, body) each, or why there is none.

    ``client``: the one to reuse (a new client builds a TLS context, which
    costs milliseconds of CPU, even for plain HTTP); None: one for this call.
    """
    found: list[tuple[int, str] | str] = ["not running"] * len(workers)

    async def one(i: int, worker: WorkerProcess, client: httpx.AsyncClient) -> None:
        if worker.pid is None:
            found[i] = f"not running (restarted {worker.restarts} times)"
            return
        port = worker.http_port
        if port is None:
            found[i] = "starting"
            return
        try:
            with trio.fail_after(WORKER_TIMEOUT_S):
                response = await client.get(f"http://127.0.0.1:{port}{path}")
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            found[i] = f"{path} did not answer ({type(exc).__name__})"
            return
        found[i] = (response.status_code, response.text)

    if client is None:
        async with httpx.AsyncClient() as own:
            return await fetch_from_workers(workers, path, own)
    async with trio.open_nursery() as nursery:
        for i, worker in enumerate(workers):
            nursery.start_soon(one, i, worker, client)
    return found


def worker_families(text: str, worker: int) -> Iterator[Metric]:
    """A worker's exposition as metric families, each sample labelled ``worker``."""
    for family in text_string_to_metric_families(text):
        family.samples = [
            s._replace(labels={**s.labels, "worker": str(worker)}) for s in family.samples
        ]
        yield family


class _Merged:
    """A collector of already collected families (generate_latest's input)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_families(groups: Iterable[Iterable[Metric]]) -> list[Metric]:
    """Families of the same name from several sources as one family each (first seen order)."""
    merged: dict[str, Metric] = {}
    for group in groups:
        for family in group:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            into.samples.extend(family.samples)
    return list(merged.values())


class ShardedHealthServer(HealthServer):
    """The parent's HTTP endpoints (see the module docstring); /healthz is its own."""

    def __init__(
        self,
        health: Health,
        metrics: Metrics,
        shards: ShardSupervisor,
        *,
        max_connections: int | None = None,
    ) -> None:
        super().__init__(health, metrics, max_connections=max_connections)
        self.shards = shards
        self._client: httpx.AsyncClient | None = None

    async def answer(self, method: str, target: str) -> tuple[int, str, bytes]:
        path = target.split("?", 1)[0]
        if method != "GET" or path not in ("/readyz", "/metrics"):
            return self.respond(method, target)
        workers = self.shards.workers
        if self._client is None:
            # Kept for the process's life: loopback HTTP, no TLS, no cookies.
            self._client = httpx.AsyncClient()
        answers = await fetch_from_workers(workers, path, self._client)
        if path == "/readyz":
            return self._readyz(workers, answers)
        return self._metrics(answers)

    def _readyz(
        self, workers: Sequence[WorkerProcess], answers: list[tuple[int, str] | str]
    ) -> tuple[int, str, bytes]:
        problems = self.health.problems()
        streams: list[dict[str, object]] = []
        states: list[dict[str, object]] = []
        for worker, answer in zip(workers, answers, strict=True):
            i = worker.shard.index
            ready = False
            if isinstance(answer, str):
                problems.append(f"worker {i}: {answer}")
            else:
                view = json.loads(answer[1])
                ready = bool(view["ready"])
                problems.extend(f"worker {i}: {p}" for p in view["problems"])
                streams.extend({**s, "worker": i} for s in view["streams"])
            states.append(
                {"worker": i, "pid": worker.pid, "restarts": worker.restarts, "ready": ready}
            )
        body = {"ready": not problems, "problems": problems, "streams": streams, "workers": states}
        status = 200 if not problems else 503
        return status, "application/json", (json.dumps(body) + "\n").encode()

    def _metrics(self, answers: list[tuple[int, str] | str]) -> tuple[int, str, bytes]:
        groups: list[list[Metric]] = []
        ready = self.health.ready
        for i, answer in enumerate(answers):
            if isinstance(answer, str) or answer[0] != 200:
                ready = False
                continue
            families = list(worker_families(answer[1], i))
            ready = ready and any(
                s.name == "mdagent_ready" and s.value == 1 for f in families for s in f.samples
            )
            groups.append(families)
        self.metrics.ready.set(1 if ready else 0)
        merged = merge_families([list(self.metrics.registry.collect()), *groups])
        return 200, CONTENT_TYPE_LATEST, generate_latest(_Merged(merged))
