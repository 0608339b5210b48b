"""The venue histories for a config: one per provider, shared by every worker.

The only place in the backfill that maps provider names to their history
modules (as ``providers/registry.py`` does for streams).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mdagent.backfill.binance import BinanceHistory
from mdagent.backfill.history import History
from mdagent.backfill.polygon import PolygonHistory
from mdagent.backfill.rest import RestEvents
from mdagent.config import SourceConfig, resolve_secret


def _binance(source: SourceConfig, events: RestEvents | None, **options: Any) -> History:
    return BinanceHistory(source.effective_rest_url(), events=events, **options)


def _polygon(source: SourceConfig, events: RestEvents | None, **options: Any) -> History:
    key = resolve_secret(source.api_key_env)
    return PolygonHistory(source.effective_rest_url(), key, events=events, **options)


HISTORIES: dict[str, Callable[..., History]] = {"binance": _binance, "polygon": _polygon}


def histories_for(
    sources: Iterable[SourceConfig], events: RestEvents | None = None, **options: Any
) -> dict[str, History]:
    """One history per provider of the sources with ``backfill`` or ``instruments``
    true (the job workers and the instruments sync share it).

    Several sources of one provider share the first one's ``rest_url`` and
    key: one client, so one rate budget per venue and process.
    """
    found: dict[str, History] = {}
    for source in sources:
        if (
            (source.backfill or source.instruments)
            and source.provider not in found
            and source.provider in HISTORIES
        ):
            found[source.provider] = HISTORIES[source.provider](source, events, **options)
    return found
