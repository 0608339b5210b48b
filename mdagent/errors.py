"""The small error hierarchy. Library errors are translated at the boundary."""

from __future__ import annotations


class MdagentError(Exception):
    """Base of every error mdagent raises on purpose."""


class ConfigError(MdagentError):
    """The configuration is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class DatabaseUnavailable(MdagentError):
    """The database cannot be reached now; the caller keeps its data and retries."""


class SchemaMissing(MdagentError):
    """The database has no mdagent tables (``mdagent migrate`` was never run on it)."""

    def __init__(self) -> None:
        super().__init__("no mdagent schema in this database; run `mdagent migrate`")


class MigrationError(MdagentError):
    """A migration file failed to apply."""


class StreamError(MdagentError):
    """A stream connection failed in a way a reconnect may fix."""


class AuthFailed(StreamError):
    """The provider rejected the credentials: a configuration problem, retried slowly."""


class ProtocolError(StreamError):
    """The provider said something the adapter does not understand."""


class FrameRefused(StreamError):
    """The WebSocket layer refused a frame and closed with ``code``.

    1007: invalid UTF-8 in a text frame; 1009: a message over the size
    limit. ``head`` holds the first bytes of what was received for it, for
    the dead letter the stream task leaves behind.
    """

    def __init__(self, code: int, reason: str, head: bytes) -> None:
        super().__init__(f"refused a frame ({code}): {reason}")
        self.code = int(code)  # wsproto hands over a CloseReason enum
        self.reason = reason
        self.head = head


class RestError(MdagentError):
    """A REST history request failed (after the client's own retries)."""


class RestUnavailable(RestError):
    """5xx, a timeout, a broken connection or a body that does not parse: try the job later."""


class VenueRejected(RestError):
    """The venue refused the request (a 4xx other than 429/418): the job fails.

    ``status`` is the HTTP status, ``code`` the venue's error code when it has
    one, as text (Binance ``-1121``, Polygon ``NOT_AUTHORIZED``), ``message`` the
    venue's own text.
    """

    def __init__(self, status: int, code: str | None, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        shown = f" code {code}" if code is not None else ""
        super().__init__(f"HTTP {status}{shown}: {message}")


class LeaseLost(MdagentError):
    """A backfill job's lease moved to another worker: this worker's page is not stored."""
