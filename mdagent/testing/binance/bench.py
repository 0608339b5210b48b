"""How ``mdagent bench`` drives the fake Binance venue (see testing/kit.py BenchProfile)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import orjson

from mdagent.testing.binance.venue import MAX_URI_CHARS
from mdagent.testing.kit import BenchProfile, Captured, TableRow, utc_of_ns

SYMBOLS_PER_CONNECTION = 5
MAX_CONNECTIONS = 4


class BinanceBench(BenchProfile):
    """20 symbols over up to 4 combined-stream connections of ~5 symbols each."""

    provider = "binance"
    channels = ("trade", "aggTrade", "bookTicker")
    # Issue 14's targets.
    ws_ratio_target = 0.5
    cpu_us_target = 10.0
    paced_rate = 40_000.0
    paced_duration_s = 30.0
    rss_target_mb = 100.0

    def symbol_names(self, count: int) -> list[str]:
        return [f"B{i:03d}USDT" for i in range(count)]

    def connections(self, symbols: int) -> int:
        return max(1, min(MAX_CONNECTIONS, -(-symbols // SYMBOLS_PER_CONNECTION)))

    def max_symbols(self) -> int:
        """The bare receive reference reads every stream on one URL, which the
        fake (like Binance, wire-formats.md 1.9) refuses beyond MAX_URI_CHARS:
        the most symbols whose URL fits (about 150)."""
        count = 1
        # Without a host: the request target, which the venue measures.
        while len(self.receive_url("", self.symbol_names(count + 1))) <= MAX_URI_CHARS:
            count += 1
        return count

    def receive_url(self, ws_url: str, symbols: Sequence[str]) -> str:
        streams = [f"{s.lower()}@{c}" for s in symbols for c in self.channels]
        return f"{ws_url.rstrip('/')}/stream?streams={'/'.join(streams)}"

    def reference_rows(self, captured: Sequence[Captured]) -> tuple[list[TableRow], int]:
        rows: list[TableRow] = []
        skipped = 0
        for frame, recv_ns in captured:
            d = orjson.loads(frame)["data"]
            recv = utc_of_ns(recv_ns)
            e = d.get("e")
            if e in ("trade", "aggTrade"):
                ts_ns = d["T"] * 1_000_000
                ident = d["t"] if e == "trade" else d["a"]
                rows.append(
                    ("trades", (
                        "binance", d["s"], e, str(ident), utc_of_ns(ts_ns // 1_000_000 * 1_000_000),
                        ts_ns, ident, Decimal(d["p"]), Decimal(d["q"]), d["m"], None, None,
                        None, None, d.get("f"), d.get("l"), None, recv,
                    ))
                )  # fmt: skip
            elif "u" in d:
                rows.append(
                    ("quotes", (
                        "binance", d["s"], "bookTicker", d["u"], recv, recv_ns,
                        Decimal(d["b"]), Decimal(d["B"]), Decimal(d["a"]), Decimal(d["A"]),
                        None, None, None, None, None, recv,
                    ))
                )  # fmt: skip
            else:
                skipped += 1
        return rows, skipped
