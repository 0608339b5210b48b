"""Opening a listening TCP port, with a one-line error that names the address."""

from __future__ import annotations

import trio

from mdagent.errors import MdagentError


class ListenError(MdagentError):
    """A port could not be bound: ``what host:port: cause`` (e.g. address already in use)."""


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_listeners(host: str, port: int, what: str) -> list[trio.SocketListener]:
    """``trio.open_tcp_listeners(port, host=host)``; OSError becomes ListenError.

    ``what`` names the setting the address came from (``http.listen``,
    ``--port``) so the message says what to change.
    """
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        cause = (exc.strerror or str(exc) or type(exc).__name__).lower()
        raise ListenError(f"{what} {format_address(host, port)}: {cause}") from exc
