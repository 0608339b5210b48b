"""Make any input storable as PostgreSQL ``text``: the one helper every path uses.

Dead letters keep hostile input (invalid UTF-8, NUL, lone surrogates from a
``str`` frame) so an operator can see it; a text column refuses all three,
and one refused value would fail a whole COPY batch. Everything that writes
provider input into a text column goes through :func:`storable_text`.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["storable_text"]

_ELLIPSIS: Final = "..."


def storable_text(data: bytes | bytearray | memoryview | str | msgspec.Raw, limit: int = 0) -> str:
    """``data`` as valid UTF-8 text without NUL, lossless for valid input.

    Invalid UTF-8 bytes and lone surrogates become backslash escapes
    (``\\xff``, ``\\udc80``), NUL becomes ``\\x00``. With ``limit`` > 0 the
    result is cut to at most ``limit`` characters (ending in ``...``).
    """
    if isinstance(data, str):
        text = data.encode("utf-8", "backslashreplace").decode("utf-8")
    else:
        text = bytes(data).decode("utf-8", "backslashreplace")
    text = text.replace("\x00", "\\x00")
    if limit > 0 and len(text) > limit:
        text = text[: max(limit - len(_ELLIPSIS), 0)] + _ELLIPSIS
    return text
