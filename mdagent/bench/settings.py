"""The options of one bench run."""

from __future__ import annotations

import argparse

import attrs

from mdagent.config import max_workers
from mdagent.providers.registry import provider_for
from mdagent.testing.kit import BenchError, BenchProfile, kit_for


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
        if args.symbols < 1:
            raise BenchError("--symbols must be >= 1")
        # Unset: the provider's paced target (its testing kit).
        bench = kit_for(args.provider).bench
        latency_rate = bench.paced_rate if args.latency_rate is None else args.latency_rate
        latency_duration = (
            bench.paced_duration_s if args.latency_duration is None else args.latency_duration
        )
        soak = getattr(args, "soak", None)
        if soak is not None and soak <= 0:
            raise BenchError("--soak must be > 0 (seconds)")
        if args.duration <= 0 or latency_duration <= 0 or latency_rate <= 0:
            raise BenchError("--duration, --latency-duration and --latency-rate must be > 0")
        workers = getattr(args, "workers", 1)
        if not 1 <= workers <= max_workers():
            raise BenchError(f"--workers must be 1 to {max_workers()}, got {workers}")
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
