"""Polygon.io / Massive stocks adapter.

``sansio`` holds the pure part (session messages, frame and REST page
parsers); the I/O client lives beside it.
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
