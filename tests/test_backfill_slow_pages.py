"""A venue that trickles its REST bodies, over real sockets (fake Binance).

Found by QA: httpx's timeout counts per read, so a body sent in small pieces,
each in time, never timed out; a page could take as long as the venue liked
while the job held its lease. The whole response has a deadline
(``TOTAL_TIMEOUT_FACTOR`` x ``timeout_s``); past it the attempt is a timeout,
retried and then RestUnavailable like any other.
"""

from __future__ import annotations

import time

import pytest
import trio

from mdagent.backfill.binance import BinanceHistory
from mdagent.backfill.rest import TOTAL_TIMEOUT_FACTOR
from mdagent.errors import RestUnavailable
from mdagent.testing.binance.venue import BinanceFaults, FakeBinance

TIMEOUT_S = 0.5
CHUNK_DELAY_S = 0.3  # each 512-byte piece well within the per-read timeout


def trickling_venue() -> FakeBinance:
    venue = FakeBinance(symbols=["BTCUSDT"], seed=5)
    now_us = time.time_ns() // 1000
    venue.prefill_history(now_us - 600_000_000, now_us, events_per_s=5)
    venue.stall(3600)
    return venue


async def test_a_trickled_page_times_out_as_a_whole() -> None:
    venue = trickling_venue()
    first = venue.market("BTCUSDT").oldest_agg_id
    params: dict[str, str | int] = {"symbol": "BTCUSDT", "fromId": first, "limit": 200}
    async with trio.open_nursery() as nursery:
        _ws, rest_url = await nursery.start(venue.serve)
        history = BinanceHistory(rest_url, timeout_s=TIMEOUT_S, max_attempts=2)
        try:
            whole = await history.client.get("/api/v3/aggTrades", params)
            # ~200 rows of ~100 bytes: many pieces, far beyond the deadline when trickled.
            pieces = len(whole.body) / 512
            assert pieces * CHUNK_DELAY_S > 2 * TOTAL_TIMEOUT_FACTOR * TIMEOUT_S
            venue.set_faults(BinanceFaults(rest_chunk_delay_s=CHUNK_DELAY_S))
            started = trio.current_time()
            with pytest.raises(RestUnavailable, match=r"timeout.*\(2 attempts\)"):
                await history.client.get("/api/v3/aggTrades", params)
            # Two attempts cut at the deadline (and a backoff), not the trickle's pace.
            assert trio.current_time() - started < pieces * CHUNK_DELAY_S
        finally:
            await history.aclose()
            nursery.cancel_scope.cancel()
