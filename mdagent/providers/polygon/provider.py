"""Polygon.io / Massive stocks, described once for the generic code (see providers/base.py).

Sources: wire-formats.md section 2. Channels (2.3): ``T`` (trades) and
``Q`` (NBBO quotes), whose ``q`` is shared, goes backwards and resets each
New York session (2.7): only a hint, never a dedup key;
``AM`` / ``A`` (minute / second candles): no sequence, and no bar is sent
for an interval without trades (2.4), so a missing bar is normal. Symbols
(2.7): case-sensitive tickers with dots and suffixes, ``*`` for all. An API
key is required (2.2). Defaults are the Massive hosts (2.1).
"""

from __future__ import annotations

from mdagent.providers.base import Channel, Provider, SequenceRule, SymbolRule, channel_table
from mdagent.providers.polygon.history import PolygonHistory
from mdagent.providers.polygon.io import PolygonAdapter
from mdagent.providers.polygon.listing import PolygonListing
from mdagent.providers.polygon.sessions import session_bounds_ns
from mdagent.symbols import polygon_symbol_problem

# q is neither unique nor monotonic and resets per New York session (2.7):
# dedup by natural key, never by q.
_SESSION_HINT = SequenceRule(identifies=False, session_bounds_ns=session_bounds_ns)

POLYGON = Provider(
    name="polygon",
    title="Polygon",
    channels=channel_table(
        [
            Channel("T", "trades", _SESSION_HINT),
            Channel("Q", "quotes", _SESSION_HINT),
            Channel("AM", "candles"),
            Channel("A", "candles"),
        ]
    ),
    symbols=SymbolRule(
        polygon_symbol_problem, "a case-sensitive ticker such as BRK.A or BCpC, or * for all"
    ),
    ws_url="wss://socket.massive.com/stocks",
    rest_url="https://api.massive.com",
    stream=PolygonAdapter(),
    listing=PolygonListing(),
    history=PolygonHistory(),
    api_key_required=True,
    testing="mdagent.testing.polygon",
    # "By default one simultaneous connection per cluster per account" (2.4).
    single_connection=True,
)
