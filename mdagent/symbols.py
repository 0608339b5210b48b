"""Symbol rules: which names a provider's config accepts, and how they go into URLs.

The rules are about the *alphabet* a provider really uses, not about which
symbols exist: whether a symbol is listed is for the instruments sync to say,
never for a regex here.

- Binance (wire-formats.md 1.9): names may hold any Unicode letters and
  digits since December 2025 (``测试币六USDT``). Stream names are the
  lowercased symbol, and a URL carries them percent-encoded as UTF-8
  (``%E6%B5%8B%E8%AF%95%E5%B8%81%E5%85%ADusdt@trade``).
- Polygon (wire-formats.md 2.7): tickers are case-sensitive and may hold dots
  and lowercase suffixes (``BRK.A``, preferred ``BCpC``, when-issued
  ``AAPLw``), or ``*`` for all; case is kept everywhere.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

__all__ = ["MAX_SYMBOL_CHARS", "binance_symbol_problem", "polygon_symbol_problem", "url_path_part"]

MAX_SYMBOL_CHARS: Final = 40

# ASCII letters and digits, '.', '-' and ':' (X:BTC-USD style): never ',' (it
# separates subscribe params) nor whitespace.
_POLYGON_TICKER: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:\-]{0,39}\Z")


def binance_symbol_problem(symbol: str) -> str | None:
    """Why ``symbol`` cannot be a Binance symbol, or None.

    Accepted: 1 to 40 Unicode letters or digits. Anything else (whitespace,
    ``@``, ``/``, ``%``, control characters) would change the meaning of a
    stream name or URL.
    """
    if not 1 <= len(symbol) <= MAX_SYMBOL_CHARS:
        return f"expected 1 to {MAX_SYMBOL_CHARS} characters, got {len(symbol)}"
    bad = [ch for ch in symbol if not ch.isalnum()]
    if bad:
        return f"only letters and digits are allowed, got {bad[0]!r}"
    if symbol.lower().upper() != symbol.upper():
        # Stream names are lowercase; a name whose case does not round-trip
        # could not be matched back to the frames' "s".
        return "its lowercase form does not map back to it"
    return None


def polygon_symbol_problem(symbol: str) -> str | None:
    """Why ``symbol`` cannot be a Polygon ticker, or None (``*`` means all tickers)."""
    if symbol == "*" or _POLYGON_TICKER.match(symbol):
        return None
    return (
        f"expected '*' or 1 to {MAX_SYMBOL_CHARS} ASCII letters, digits, '.', ':' or '-'"
        " starting with a letter or digit"
    )


def url_path_part(text: str, safe: str = "@") -> str:
    """``text`` percent-encoded as UTF-8 for a URL (``safe`` characters kept)."""
    return quote(text, safe=safe)
