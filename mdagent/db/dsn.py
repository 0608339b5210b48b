"""The ``database.dsn`` setting: validation and masking, through libpq's own parser.

A DSN is either the word ``embedded`` or a libpq connection string, in
keyword form (``host=db password='my secret pw'``) or URI form
(``postgresql://u:pw@db/md``). Masking by pattern cannot know where a quoted
keyword value ends, so both functions parse the DSN with psycopg's conninfo
helpers (libpq itself) and never guess.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import conninfo

EMBEDDED = "embedded"
MASK = "***"
# Parameters whose value is a secret: the password and the client key's passphrase.
_SECRET_KEYS = ("password", "sslpassword")


# libpq's parse errors quote the text they stopped at (``missing "=" after
# "ret'" ...``, ``... in URI: "postgresql://u:pw@[::1"``), which may be the
# password itself or a piece of it: quoted text is never echoed, except a
# single punctuation character (the token libpq expected: "=", "]") and the
# keyword of an unknown option (``invalid connection option "passwrd"``).
_QUOTED = re.compile(r'"([^"]*)"')
_KEYWORD_ERRORS = ("invalid connection option ", "invalid URI query parameter: ")


def _redacted(reason: str) -> str:
    if reason.startswith(_KEYWORD_ERRORS) and re.fullmatch(r'[^"]*"\w+"', reason):
        return reason

    def one(match: re.Match[str]) -> str:
        text = match[1]
        return match[0] if len(text) == 1 and not text.isalnum() else '"…"'

    return _QUOTED.sub(one, reason)


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not usable, as one phrase; None when it is ``embedded`` or parses.

    Only the syntax is checked (no connection is made): ``mysql://x`` and an
    unknown URI parameter are problems, an unreachable host is not.
    """
    if dsn == EMBEDDED:
        return None
    if not dsn.strip():
        return 'empty; use "embedded" or a libpq DSN such as "postgresql://user@host/db"'
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "not parseable"
        reason = _redacted(reason)
        return (
            f'not a PostgreSQL connection string ({reason}); use "embedded" or a libpq DSN'
            ' such as "postgresql://user@host/db" or "host=db dbname=md"'
        )
    return None


def masked_dsn(dsn: str) -> str:
    """``dsn`` for logs and output: the whole password (and sslpassword) value replaced by ``***``.

    A DSN that carries one comes back in keyword form (libpq's own
    quoting). One that does not parse is not echoed at all: it might hold a
    password that cannot be located.
    """
    if dsn == EMBEDDED:
        return dsn
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    secret = [key for key in _SECRET_KEYS if key in params]
    if not secret:
        return dsn
    for key in secret:
        params[key] = MASK
    return conninfo.make_conninfo("", **params)
