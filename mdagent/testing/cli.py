"""`mdagent fake-venue PROVIDER`: serve a provider's built-in fake venue on loopback.

Prints one JSON line with the URLs once listening, then serves until SIGINT/SIGTERM.
The venue class comes from the provider's testing kit (``mdagent/testing/kit.py``).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from functools import partial
from typing import Any

import trio

from mdagent.listen import format_address
from mdagent.providers.registry import provider_for
from mdagent.testing.kit import kit_for
from mdagent.text import storable_text


def run_fake_venue(args: argparse.Namespace) -> int:
    venue = kit_for(args.provider).venue
    if getattr(args, "replay", 0) and not args.no_record_sent:
        print("mdagent: fake-venue --replay needs --no-record-sent", file=sys.stderr)
        return 2
    options = venue.options_from_cli(args)
    problem = _options_problem(args.provider, options)
    if problem:
        # A venue serving '' or 'BTC/USDT' served streams no config can name.
        print(f"mdagent: error: {problem} (see mdagent fake-venue --help)", file=sys.stderr)
        return 2
    serve = partial(venue.serve_forever, args.host, args.port, args.rest_port, **options)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    failed: list[OSError] = []
    try:
        trio.run(main)
    except* OSError as group:
        # A port in use (or a host not on this machine): one line, exit 1.
        failed += _leaves(group)
    if failed:
        cause = (failed[0].strerror or str(failed[0])).lower()
        print(f"mdagent: fake-venue {_failed_address(args)}: {cause}", file=sys.stderr)
        return 1
    return 0


def _options_problem(provider: str, options: dict[str, Any]) -> str | None:
    """What is wrong with the venue's symbols or API keys (as the config would
    judge them), or None."""
    rule = provider_for(provider).symbols
    symbols = options["symbols"]
    if not symbols:
        return "--symbols: at least one symbol is required"
    for symbol in symbols:
        why = rule.problem(symbol)
        if why is not None:
            return f"--symbols: invalid symbol {storable_text(symbol, 60)!r} for {provider}: {why}"
    if len({rule.same_as(s) for s in symbols}) != len(symbols):
        return "--symbols: duplicate symbols"
    for key in [options.get("api_key", "x"), *options.get("extra_api_keys", [])]:
        if not key or not key.isprintable() or any(c.isspace() for c in key):
            return "--api-key / --extra-api-keys: a key is empty or holds whitespace"
    return None


def _leaves(group: BaseExceptionGroup[OSError]) -> list[OSError]:
    found: list[OSError] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _failed_address(args: argparse.Namespace) -> str:
    """Which of ``--port`` / ``--rest-port`` cannot be bound, as ``--flag host:port``.

    trio's bind error does not carry the address; binding each fixed port
    again (briefly) finds the one in use.
    """
    tried = []
    for flag, port in (("--port", args.port), ("--rest-port", args.rest_port)):
        if not port:
            continue
        tried.append(f"{flag} {format_address(args.host, port)}")
        try:
            with socket.create_server((args.host, port)):
                pass
        except OSError:
            return tried[-1]
    return " / ".join(tried) or args.host
