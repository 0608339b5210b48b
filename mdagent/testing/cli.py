"""`mdagent fake-venue binance|polygon`: serve a built-in fake venue on loopback.

Prints one JSON line with the URLs once listening, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from functools import partial

import trio

from mdagent.listen import format_address


def run_fake_venue(args: argparse.Namespace) -> int:
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if args.provider == "binance":
        from mdagent.testing.binance.venue import serve_forever

        serve = partial(
            serve_forever,
            args.host,
            args.port,
            args.rest_port,
            symbols=symbols,
            seed=args.seed,
            events_per_s=args.rate,
        )
    else:
        from mdagent.testing.polygon.venue import serve_forever as serve_polygon

        serve = partial(
            serve_polygon,
            args.host,
            args.port,
            args.rest_port,
            tickers=symbols,
            seed=args.seed,
            events_per_s=args.rate,
            api_key=args.api_key,
            extra_api_keys=[
                k.strip() for k in getattr(args, "extra_api_keys", "").split(",") if k.strip()
            ],
            record_sent=not getattr(args, "no_record_sent", False),
            late_trade_ratio=getattr(args, "late_trade_ratio", 0.02),
        )

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
