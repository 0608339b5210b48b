"""A provider's testing kit: its fake venue class and what the bench needs of it.

The provider description (``Provider.testing``) names the package of its kit
(``mdagent/testing/<provider>/``), which exports ``KIT``. Generic code
(``mdagent fake-venue``, ``mdagent bench``) asks :func:`kit_for` and never
names a provider; the agent itself never imports this package.
"""

from __future__ import annotations

import abc
import datetime as dt
import importlib
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from mdagent.config import SourceConfig
from mdagent.providers.registry import provider_for
from mdagent.providers.wsclient import WebSocketClient
from mdagent.testing.venue import FakeVenue

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# One captured frame and its receive time (ns), as the bench's reference A keeps them.
Captured = tuple[str, int]
# A canonical row for reference B: (table, column values in the bench's column order).
TableRow = tuple[str, tuple[Any, ...]]


class MessageSocket(Protocol):
    """What a bare reference client offers a provider's handshake: one message at a
    time (trio-websocket's connection as it is; other clients through an adapter)."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str) -> None: ...


class BenchError(Exception):
    """Something the bench needs did not run (not a missed target)."""


class BenchUsageError(BenchError):
    """A bench option out of range for this provider (a usage error, exit 2)."""


def utc_of_ns(ns: int) -> dt.datetime:
    """Nanoseconds since the epoch -> an aware UTC datetime (microsecond precision)."""
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


class BenchProfile(abc.ABC):
    """How ``mdagent bench`` drives one provider's fake venue and the references.

    ``provider``: the registry name. ``channels``: the channels every bench source records. ``counts_events``:
    frames carry many events, so receive rates are counted in events (else
    frames). ``ws_ratio_target`` / ``copy_ratio_target``: the targets printed
    next to the committed / bare ``websockets`` receive and committed /
    bare-COPY ratios (None: none). ``cpu_us_target``: agent CPU per committed
    event, microseconds (None: none). ``paced_rate`` / ``paced_duration_s``:
    the fixed-rate phase's default events/s in total and seconds; its targets
    (everything committed, p99 event-to-commit) hold at that rate.
    ``rss_target_mb``: peak memory of the agent phases (one process: its peak
    RSS; with worker processes: the peak of their summed PSS, bench/sharded.py).
    """

    provider: str
    channels: tuple[str, ...]
    counts_events: bool = False
    ws_ratio_target: float | None = None
    copy_ratio_target: float | None = None
    cpu_us_target: float | None = None
    paced_rate: float = 5000.0
    paced_duration_s: float = 10.0
    rss_target_mb: float = 200.0

    @abc.abstractmethod
    def symbol_names(self, count: int) -> list[str]:
        """``count`` symbols the fake venue serves and the config accepts."""

    @abc.abstractmethod
    def connections(self, symbols: int) -> int:
        """How many connections (sources) the agent spreads ``symbols`` over."""

    def max_symbols(self) -> int:
        """The most symbols a bench run can use with this venue: 1,000 by
        default (the fake venue gets them on its command line, where 100,000
        failed with "Argument list too long"; beyond, the figures say nothing new)."""
        return 1000

    def venue_args(
        self, api_keys: Sequence[str], *, late_trades: bool, max_rate: bool = False
    ) -> list[str]:
        """Extra ``mdagent fake-venue`` options for the bench's venue process.

        ``max_rate``: the venue serves as fast as the client reads (the
        max-rate phase and the bare receive references).
        """
        return []

    def venue_rate(self, total_rate: float, connections: int) -> float:
        """The fake venue's ``--rate`` for ``total_rate`` events/s over all of
        ``connections`` open connections (the ones the agent really opens).

        By default the venue paces each connection's own frames: the total is
        split between them. A venue that paces a shared tape instead says so.
        """
        return total_rate / max(1, connections)

    def source(
        self, index: int, symbols: Sequence[str], ws_url: str, rest_url: str, api_key: str
    ) -> SourceConfig:
        """The ``index``-th bench source (no backfill), pointed at the venue."""
        return SourceConfig(
            provider=self.provider,
            symbols=tuple(symbols),
            channels=self.channels,
            name=f"bench-{index}",
            ws_url=ws_url,
            rest_url=rest_url,
            api_key_env=self.api_key_env(index, api_key),
            backfill=False,
        )

    def api_key_env(self, index: int, api_key: str) -> str | None:
        """The variable source ``index`` reads its key from, set to ``api_key`` (None: no key)."""
        return None

    def receive_url(self, ws_url: str, symbols: Sequence[str]) -> str:
        """The URL a bare reference client connects to for ``symbols``."""
        return ws_url

    async def bare_handshake(self, ws: MessageSocket, api_key: str, symbols: Sequence[str]) -> None:
        """Subscribe a bare connection (references A and A3); nothing when the URL does."""
        return None

    async def lean_handshake(
        self, ws: WebSocketClient, api_key: str, symbols: Sequence[str]
    ) -> None:
        """Subscribe an mdagent client connection (reference A2); nothing when the URL does."""
        return None

    def events_in(self, frame: str | bytes) -> int:
        """Market events in one frame (1 unless ``counts_events``)."""
        return 1

    @abc.abstractmethod
    def reference_rows(self, captured: Sequence[Captured]) -> tuple[list[TableRow], int]:
        """Canonical trades/quotes rows of the captured frames in arrival order, and
        how many events were skipped (bars need an upsert, not a plain COPY)."""


@attrs.frozen
class TestingKit:
    """What the tests, ``mdagent fake-venue`` and ``mdagent bench`` need of a provider."""

    venue: type[FakeVenue[Any]]
    bench: BenchProfile


def kit_for(provider: str) -> TestingKit:
    """The testing kit of ``provider``; ValueError when it has none."""
    package = provider_for(provider).testing
    if package is None:
        raise ValueError(f"provider {provider!r} has no fake venue")
    kit: TestingKit = importlib.import_module(package).KIT
    return kit
