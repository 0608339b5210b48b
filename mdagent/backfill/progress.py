"""Progress of ``mdagent backfill``: rich on a terminal, plain log lines otherwise.

Both read the same snapshot (the plan's ``fetch_jobs`` rows, polled): per job
its state and rows, in total jobs finished, rows, rows/s and an ETA from the
share of jobs finished.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from mdagent.db.jobs import JobRow

TERMINAL = frozenset({"done", "failed", "unrecoverable"})


class Display(Protocol):
    def update(self, jobs: Sequence[JobRow]) -> None: ...
    def close(self) -> None: ...


def summary(jobs: Sequence[JobRow], elapsed_s: float) -> str:
    finished = sum(j.status in TERMINAL for j in jobs)
    rows = sum(j.rows_written for j in jobs)
    rate = rows / elapsed_s if elapsed_s > 0 else 0.0
    eta = ""
    if 0 < finished < len(jobs):
        eta = f", ETA {elapsed_s * (len(jobs) - finished) / finished:.0f}s"
    return f"{finished}/{len(jobs)} jobs, {rows} rows, {rate:,.0f} rows/s{eta}"


class PlainDisplay:
    """One log line every ``every_s`` seconds (and at the end)."""

    def __init__(self, out: TextIO = sys.stderr, every_s: float = 5.0) -> None:
        self.out = out
        self.every_s = every_s
        self.started = time.monotonic()
        self._last = -float("inf")
        self._jobs: Sequence[JobRow] = ()

    def update(self, jobs: Sequence[JobRow]) -> None:
        self._jobs = jobs
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line()

    def _line(self) -> None:
        running = [f"#{j.id}:{j.rows_written}" for j in self._jobs if j.status == "running"]
        shown = f" running {' '.join(running)}" if running else ""
        elapsed = time.monotonic() - self.started
        print(f"backfill: {summary(self._jobs, elapsed)}{shown}", file=self.out, flush=True)

    def close(self) -> None:
        self._line()


class RichDisplay:
    """A total bar (jobs finished, rows, rows/s, ETA) and one line per job that has started."""

    def __init__(self, console: Console | None = None) -> None:
        self.started = time.monotonic()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
        )
        self.total: TaskID | None = None
        self.tasks: dict[int, TaskID] = {}
        self.progress.start()

    def update(self, jobs: Sequence[JobRow]) -> None:
        p = self.progress
        finished = sum(j.status in TERMINAL for j in jobs)
        detail = summary(jobs, time.monotonic() - self.started)
        if self.total is None:
            self.total = p.add_task("total", total=len(jobs), detail=detail)
        p.update(self.total, completed=finished, detail=detail)
        for job in jobs:
            if job.status == "pending" and job.id not in self.tasks:
                continue
            task = self.tasks.get(job.id)
            label = f"#{job.id} {job.symbol} {job.channel}"
            text = f"{job.status} {job.rows_written} rows"
            if task is None:
                self.tasks[job.id] = p.add_task(label, total=1, detail=text)
            else:
                p.update(task, completed=1 if job.status in TERMINAL else 0, detail=text)

    def close(self) -> None:
        self.progress.stop()


def display_for(out: TextIO = sys.stderr) -> Display:
    """Rich when ``out`` is a terminal, plain lines otherwise (logs, CI, pipes)."""
    if out.isatty():
        return RichDisplay()
    return PlainDisplay(out)
