"""Polygon.io / Massive stocks: the description (``provider``), the pure part
(``sansio``: session messages, frame and REST page parsers), the WebSocket
client (``io``, the stream half) and REST pages (``history``).
"""

from mdagent.providers.polygon.sansio import (
    PROVIDER,
    PolygonParser,
    auth_message,
    parse_aggs_page,
    parse_error_body,
    parse_quotes_page,
    parse_trades_page,
    subscribe_message,
    trade_id,
    unsubscribe_message,
)

__all__ = [
    "PROVIDER",
    "PolygonParser",
    "auth_message",
    "parse_aggs_page",
    "parse_error_body",
    "parse_quotes_page",
    "parse_trades_page",
    "subscribe_message",
    "trade_id",
    "unsubscribe_message",
]
