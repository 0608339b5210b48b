"""The options of one bench run."""

from __future__ import annotations

import argparse
import math

import attrs

from mdagent.config import max_workers
from mdagent.providers.registry import provider_for
from mdagent.shards.assign import shard_of_symbol
from mdagent.testing.kit import BenchProfile, BenchUsageError, kit_for


@attrs.define
class Settings:
    provider: str
    symbols: int
    duration_s: float
    latency_rate: float
    latency_duration_s: float
    dsn: str
    warmup_s: float
    reference_s: float
    # --soak S: only a paced run of S seconds with RSS sampled (bench/soak.py).
    soak_s: float | None = None
    # Worker processes of the last agent phases; the max-rate phase also runs
    # with 1 .. workers - 1 for the scaling table.
    workers: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The run's settings; BenchUsageError (exit 2) names an option out of range.

        The command line (cli.py) already holds each number to its own range;
        the symbol count's depends on the provider.
        """
        # Unset: the provider's paced target (its testing kit).
        bench = kit_for(args.provider).bench
        most = bench.max_symbols()
        if not 1 <= args.symbols <= most:
            raise BenchUsageError(
                f"--symbols must be 1 to {most:,} for {args.provider}, got {args.symbols}"
            )
        latency_rate = bench.paced_rate if args.latency_rate is None else args.latency_rate
        latency_duration = (
            bench.paced_duration_s if args.latency_duration is None else args.latency_duration
        )
        soak = getattr(args, "soak", None)
        for option, value in (
            ("--duration", args.duration),
            ("--latency-duration", latency_duration),
            ("--latency-rate", latency_rate),
            ("--soak", 1.0 if soak is None else soak),
        ):
            if not (math.isfinite(value) and value > 0):
                raise BenchUsageError(f"{option} must be a number > 0, got {value}")
        workers = getattr(args, "workers", 1)
        if not 1 <= workers <= max_workers():
            raise BenchUsageError(f"--workers must be 1 to {max_workers()}, got {workers}")
        return cls(
            provider=args.provider,
            symbols=args.symbols,
            duration_s=float(args.duration),
            latency_rate=float(latency_rate),
            latency_duration_s=float(latency_duration),
            dsn=args.dsn,
            warmup_s=min(3.0, max(1.0, args.duration / 4)),
            reference_s=min(5.0, max(2.0, args.duration / 4)),
            soak_s=None if soak is None else float(soak),
            workers=workers,
        )

    @property
    def profile(self) -> BenchProfile:
        """How this provider's fake venue is driven (its testing kit)."""
        return kit_for(self.provider).bench

    def symbol_names(self) -> list[str]:
        return self.profile.symbol_names(self.symbols)

    def connections(self, workers: int = 1) -> int:
        """The sources (connections) of an agent phase with ``workers`` processes: the
        profile's count, and at least one per worker for a single-connection provider
        (its sources are not split, so fewer would leave workers idle)."""
        n = self.profile.connections(self.symbols)
        if provider_for(self.provider).single_connection:
            n = max(n, workers)
        return n

    def source_groups(self, workers: int = 1) -> list[list[str]]:
        """The symbols of each bench source (``connections(workers)`` of them)."""
        names = self.symbol_names()
        n = self.connections(workers)
        return [names[i::n] for i in range(n)]

    def opened_connections(self, workers: int = 1) -> int:
        """The connections the agent opens with ``workers`` processes: one per source
        per worker holding some of its symbols (a split source opens one in each
        worker, shards/assign.py); a single-connection provider's sources stay whole."""
        if workers == 1 or provider_for(self.provider).single_connection:
            return self.connections(workers)
        return sum(
            len({shard_of_symbol(self.provider, s, workers) for s in group})
            for group in self.source_groups(workers)
        )

    def venue_rate(self, workers: int = 1) -> float:
        """The fake venue's ``--rate`` that makes ``latency_rate`` events/s in total
        over the connections the agent opens with ``workers`` processes."""
        return self.profile.venue_rate(self.latency_rate, self.opened_connections(workers))
