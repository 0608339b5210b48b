"""The instruments sync: each venue's listing into ``instruments``, at start and daily.

```
InstrumentSync.run (nursery, in the agent's REST subtree beside the backfill)
└── instruments:<provider>   listing -> instruments table -> symbols checked
                              -> /readyz problems; then sleep ``every_s``
```

A provider takes part when its description has a listing half
(``Provider.listing``) and the agent has a REST history for it (the venue
I/O of ``backfill/``, whose client and rate budget it shares with the
backfill workers: one budget per venue and process). Generic: nothing here
names a provider.

Each configured symbol is checked against the listing: one not listed at
all (a typo) or listed but not trading (Binance status other than
``TRADING``, Polygon ``active`` false) is one error line naming the
provider, the symbol and, for an unknown one, the nearest listed spellings,
and a ``/readyz`` problem until a later pass finds it fine. A failed pass
(venue, body, database) is logged and retried with a growing jittered
delay; it never stops the agent.
"""

from __future__ import annotations

import difflib
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import psycopg
import structlog
import trio

from mdagent.config import SourceConfig
from mdagent.db.connection import connect
from mdagent.db.instruments import store_instruments
from mdagent.errors import DatabaseUnavailable, RestError
from mdagent.pipeline.backoff import Backoff
from mdagent.pipeline.health import Health
from mdagent.pipeline.metrics import Metrics
from mdagent.providers.base import Instrument, Provider
from mdagent.providers.registry import provider_for

if TYPE_CHECKING:
    from mdagent.backfill.history import History

log = structlog.get_logger("mdagent.instruments")

# Nearest spellings offered for an unknown symbol: at most this many, at
# least this similar (difflib ratio): "BTCUSTD" -> "BTCUSDT".
NEAREST_COUNT = 3
NEAREST_CUTOFF = 0.75


@attrs.frozen
class SymbolProblem:
    """A configured symbol the listing does not have, or has but does not trade.

    ``nearest``: listed spellings close to an unknown symbol (empty otherwise).
    ``text``: the one-line problem, as /readyz and ``mdagent status`` show it.
    """

    provider: str
    symbol: str
    status: str | None  # the venue's status word; None when not listed
    nearest: tuple[str, ...]
    text: str


def symbol_problems(
    provider: Provider, symbols: Iterable[str], listed: Mapping[str, tuple[str, bool]]
) -> list[SymbolProblem]:
    """The problems of ``symbols`` (as configured) against ``listed``
    (``{listing spelling: (status, active)}``). A provider without a listing
    half, and symbols naming no single instrument (Polygon ``*``), have none."""
    listing = provider.listing
    if listing is None:
        return []
    found = []
    for symbol in dict.fromkeys(symbols):
        key = listing.listed_as(symbol)
        if key is None:
            continue
        entry = listed.get(key)
        if entry is None:
            near = tuple(difflib.get_close_matches(key, listed, NEAREST_COUNT, NEAREST_CUTOFF))
            hint = f" (nearest listed: {', '.join(near)})" if near else ""
            text = f"{provider.name}: symbol {symbol!r} is not listed by {provider.title}{hint}"
            found.append(SymbolProblem(provider.name, symbol, None, near, text))
        elif not entry[1]:
            text = (
                f"{provider.name}: symbol {symbol!r} is not trading"
                f" ({provider.title} status {entry[0]})"
            )
            found.append(SymbolProblem(provider.name, symbol, entry[0], (), text))
    return found


def health_topic(provider: str) -> str:
    """The name under which a provider's symbol problems are reported to Health."""
    return f"instruments:{provider}"


class InstrumentSync:
    """Sync every provider of ``histories`` that has a listing half, until cancelled.

    ``sources``: the current sources (read each pass, so a reload counts);
    those with ``instruments = false`` are neither checked nor a reason to
    sync. ``every_s``: the time between successful passes (read each pass).
    ``metrics``: ``mdagent_instruments_listed``, ``mdagent_instrument_problems``
    and ``mdagent_instruments_synced_timestamp_seconds``, per provider.
    ``retry``: (first, largest) delay in seconds after a failed pass.
    """

    def __init__(
        self,
        dsn: str,
        histories: Mapping[str, History],
        sources: Callable[[], Sequence[SourceConfig]],
        health: Health,
        every_s: Callable[[], float],
        metrics: Metrics | None = None,
        *,
        retry: tuple[float, float] = (5.0, 600.0),
        rng: random.Random | None = None,
    ) -> None:
        self.dsn = dsn
        self.histories = dict(histories)
        self.sources = sources
        self.health = health
        self.metrics = metrics or Metrics()
        self.every_s = every_s
        self.retry = retry
        self._rng = rng or random.Random()
        self.passes: dict[str, int] = {}  # successful passes per provider
        # The last listing read per provider, {symbol: (status, active)}: a
        # reload's symbols are checked against it at once (recheck()).
        self._listed: dict[str, dict[str, tuple[str, bool]]] = {}

    def providers(self) -> list[str]:
        """Providers this sync covers: a listing half, a history, a source that wants it."""
        wanted = {s.provider for s in self.sources() if s.instruments}
        return sorted(
            name
            for name in self.histories
            if name in wanted and provider_for(name).listing is not None
        )

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for name in self.providers():
                nursery.start_soon(self._loop, name, name=f"instruments:{name}")

    async def _loop(self, name: str) -> None:
        backoff = Backoff(*self.retry, rng=self._rng)
        while True:
            try:
                await self.sync_once(name)
            except (RestError, ValueError, DatabaseUnavailable, psycopg.Error) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "instruments.sync_failed",
                    provider=name,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 2),
                )
                await trio.sleep(delay)
                continue
            backoff.reset()
            await trio.sleep(self.every_s())

    def _symbols(self, name: str) -> list[str]:
        return [
            symbol
            for source in self.sources()
            if source.provider == name and source.instruments
            for symbol in source.symbols
        ]

    async def sync_once(self, name: str) -> list[SymbolProblem]:
        """One pass for provider ``name``: read, store, check; the problems found.

        Raises RestError, ValueError (an unreadable listing), DatabaseUnavailable.
        """
        provider = provider_for(name)
        listing = provider.listing
        assert listing is not None
        symbols = self._symbols(name)
        keys = [k for k in dict.fromkeys(map(listing.listed_as, symbols)) if k is not None]
        instruments = await self.histories[name].instruments(keys)
        stored = await trio.to_thread.run_sync(self._store, name, instruments)
        listed = {i.symbol: (i.status, i.active) for i in instruments}
        self._listed[name] = listed
        problems = self._check(name)
        self.metrics.instruments_listed.labels(name).set(len(listed))
        self.metrics.instruments_synced.labels(name).set(time.time())
        self.passes[name] = self.passes.get(name, 0) + 1
        log.info("instruments.synced", provider=name, listed=len(listed), stored=stored)
        return problems

    def recheck(self) -> None:
        """Check the current sources' symbols against the listings already read
        (after a reload: a fixed typo stops being a problem at once, a new one starts)."""
        for name in self._listed:
            self._check(name)

    def _check(self, name: str) -> list[SymbolProblem]:
        problems = symbol_problems(provider_for(name), self._symbols(name), self._listed[name])
        for problem in problems:
            log.error(
                "instruments.symbol_problem",
                provider=name,
                symbol=problem.symbol,
                status=problem.status,
                nearest=list(problem.nearest),
                problem=problem.text,
            )
        self.health.report(health_topic(name), [p.text for p in problems])
        self.metrics.instrument_problems.labels(name).set(len(problems))
        return problems

    def _store(self, name: str, instruments: Sequence[Instrument]) -> int:
        try:
            with connect(self.dsn, autocommit=True) as conn:
                return store_instruments(conn, name, instruments)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"instruments: {exc}") from exc
