"""`mdagent fake-venue binance|polygon`: serve a built-in fake venue on loopback.

Prints one JSON line with the URLs once listening, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
from functools import partial

import trio


def run_fake_venue(args: argparse.Namespace) -> int:
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if args.provider == "binance":
        from mdagent.testing.fake_binance import serve_forever

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
        from mdagent.testing.fake_polygon import serve_forever as serve_polygon

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

    trio.run(main)
    return 0
