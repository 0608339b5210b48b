"""What a job worker needs from a venue's REST history, and nothing more.

A venue's REST I/O (``backfill/binance.py``, ``backfill/polygon.py``) is the
only code that knows endpoints, parameters, weights and paging; pages and
error bodies are read by the provider's sans-IO history half
(``Provider.history`` in ``providers/base.py``: ``parse_page`` -> ``Page``,
``parse_error`` -> ``ApiError``), looked up in the registry. The worker loop
(``backfill/worker.py``) is generic.

A job asks for one (provider, symbol, channel) range: an inclusive id range
(``from_seq``..``to_seq``: a Binance trade/aggTrade gap) or an inclusive time
range in ns (``from_ts_ns``..``to_ts_ns``), and carries its checkpoint
(``cursor``, opaque text owned by the venue module). ``next_page`` reads one
page from the checkpoint and says where the next one starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from mdagent.backfill.plan import Estimate, Plan
from mdagent.db.jobs import FoundRange, Job
from mdagent.errors import VenueRejected
from mdagent.providers.base import Instrument
from mdagent.records import Record


@attrs.frozen
class Page:
    """One page of a job.

    records: trades / quotes / candles within the job's range, plus dead
        letters for rows that did not parse.
    cursor: the checkpoint after this page; None when the job is complete.
    found: id ranges proved absent on REST (or unreadable), to record.
    requests: REST requests this page took (not counting retries).
    """

    records: list[Record]
    cursor: str | None
    found: tuple[FoundRange, ...] = ()
    requests: int = 1


class History(Protocol):
    """A venue's REST history, as the job workers use it."""

    provider: str

    def has_history(self, channel: str) -> bool:
        """False for channels the venue keeps no history of (Binance ``bookTicker``)."""
        ...

    def is_unrecoverable(self, error: VenueRejected) -> bool:
        """True when a refusal means "no history for you" rather than a bad request
        (Polygon 403: not entitled to data that old)."""
        ...

    async def next_page(self, job: Job) -> Page:
        """The page at ``job.cursor`` (the start of the range when None).

        Raises RestUnavailable (try later), VenueRejected (the job fails).
        """
        ...

    async def estimate(self, plan: Plan) -> Estimate:
        """What ``plan`` will cost in requests, weight and time (``--dry-run``)."""
        ...

    async def instruments(self, symbols: Sequence[str]) -> list[Instrument]:
        """The venue's instrument list, read through the provider's listing half.

        ``symbols``: the configured symbols, spelled as the listing spells
        them; a venue whose full list leaves out inactive instruments looks
        those up one by one, so a delisted symbol is told from an unknown
        one. Raises RestUnavailable, VenueRejected, ValueError (a body that
        is not a listing).
        """
        ...

    async def lookup(self, symbol: str) -> list[Instrument]:
        """The venue's entries for one symbol, active or not (delisted history
        is still history); empty when the venue does not know it. Raises
        RestUnavailable, ValueError (a body that is not a listing).
        """
        ...

    async def start(self) -> None:
        """Learn what the venue advertises up front (Binance: its weight limit)."""
        ...

    async def aclose(self) -> None: ...
