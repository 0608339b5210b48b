"""How ``mdagent bench`` drives the fake Polygon venue (see testing/kit.py BenchProfile)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from decimal import Decimal

import orjson

from mdagent.providers.wsclient import WebSocketClient
from mdagent.testing.kit import (
    BenchError,
    BenchProfile,
    Captured,
    MessageSocket,
    TableRow,
    utc_of_ns,
)

KEY_ENV = "MDAGENT_BENCH_POLYGON_KEY_{}"
# The max-rate venue's tape: about a second of the agent's rate per pass
# (~150 MB in the venue, ~1 s to generate).
REPLAY_EVENTS = 200_000


class PolygonBench(BenchProfile):
    """T+Q+AM over one connection, frames of 20-50 events."""

    provider = "polygon"
    channels = ("T", "Q", "AM")
    counts_events = True
    # Issue 14's targets.
    copy_ratio_target = 0.75
    rss_target_mb = 150.0

    def symbol_names(self, count: int) -> list[str]:
        return [f"TK{i:03d}" for i in range(count)]

    def connections(self, symbols: int) -> int:
        """One connection, as the service allows per key by default."""
        return 1

    def venue_rate(self, total_rate: float, connections: int) -> float:
        """The fake paces each connection through the one market tape (all
        tickers): connections splitting the tickers share its rate."""
        return total_rate

    def venue_args(
        self, api_keys: Sequence[str], *, late_trades: bool, max_rate: bool = False
    ) -> list[str]:
        """At max rate the venue replays a generated tape (``--replay``): generating
        the market live cost it ~5 us of CPU per event, half a core at the agent's
        rate, taken from the agent and the database on a 2-core machine (a real
        venue is not on the recorder's machine). The paced phases generate live:
        their latency is measured from the moment an event is generated."""
        args = ["--api-key", api_keys[0], "--no-record-sent"]
        if max_rate:
            args += ["--replay", str(REPLAY_EVENTS)]
        if not late_trades:
            args += ["--late-trade-ratio", "0"]
        if len(api_keys) > 1:
            args += ["--extra-api-keys", ",".join(api_keys[1:])]
        return args

    def api_key_env(self, index: int, api_key: str) -> str | None:
        env = KEY_ENV.format(index)
        os.environ[env] = api_key
        return env

    def _params(self, symbols: Sequence[str]) -> str:
        return ",".join(f"{c}.{s}" for s in symbols for c in self.channels)

    async def bare_handshake(self, ws: MessageSocket, api_key: str, symbols: Sequence[str]) -> None:
        async def expect(status: str) -> None:
            while True:
                frame = await ws.get_message()
                for event in orjson.loads(frame):
                    if event.get("ev") == "status":
                        if event.get("status") == status:
                            return
                        if event.get("status") != "success":
                            raise BenchError(f"polygon handshake: {event}")

        await expect("connected")
        await ws.send_message(orjson.dumps({"action": "auth", "params": api_key}).decode())
        await expect("auth_success")
        params = self._params(symbols)
        await ws.send_message(orjson.dumps({"action": "subscribe", "params": params}).decode())

    async def lean_handshake(
        self, ws: WebSocketClient, api_key: str, symbols: Sequence[str]
    ) -> None:
        await ws.send_text(orjson.dumps({"action": "auth", "params": api_key}).decode())
        params = self._params(symbols)
        await ws.send_text(orjson.dumps({"action": "subscribe", "params": params}).decode())

    def events_in(self, frame: str | bytes) -> int:
        return frame.count('"ev":') if isinstance(frame, str) else frame.count(b'"ev":')

    def reference_rows(self, captured: Sequence[Captured]) -> tuple[list[TableRow], int]:
        rows: list[TableRow] = []
        skipped = 0
        for frame, recv_ns in captured:
            recv = utc_of_ns(recv_ns)
            for ev in json.loads(frame, parse_float=Decimal):
                kind = ev.get("ev")
                if kind == "T":
                    ts_ns = ev["t"] * 1_000_000
                    size = Decimal(ev["ds"]) if "ds" in ev else Decimal(ev["s"])
                    ident = f"{ev['x']}:{ev.get('trfi', '')}:{ev['i']}"
                    rows.append(
                        ("trades", (
                            "polygon", ev["sym"], "T", ident, utc_of_ns(ts_ns), ts_ns, ev["q"],
                            Decimal(ev["p"]), size, None, ev["x"], ev["z"], ev.get("c"),
                            ev.get("trfi"), None, None, None, recv,
                        ))
                    )  # fmt: skip
                elif kind == "Q":
                    ts_ns = ev["t"] * 1_000_000
                    rows.append(
                        ("quotes", (
                            "polygon", ev["sym"], "Q", ev["q"], utc_of_ns(ts_ns), ts_ns,
                            Decimal(ev["bp"]), Decimal(ev["bs"]), Decimal(ev["ap"]),
                            Decimal(ev["as"]), ev["bx"], ev["ax"],
                            [ev["c"]] if "c" in ev else None, ev.get("i"), ev["z"], recv,
                        ))
                    )  # fmt: skip
                else:
                    skipped += 1  # bars go through an upsert, not a plain COPY
        return rows, skipped
