"""End to end: the agent against the fake Binance venue and a real PostgreSQL.

Ground truth is what the venue says it sent; the database must hold exactly
that, once, with exact decimals, and record every hole it could not fill.
"""

from __future__ import annotations

from decimal import Decimal

import trio

from mdagent.testing.binance.venue import BinanceFaults, FakeBinance
from tests.agent_support import (
    aquery,
    binance_source,
    make_config,
    query,
    running_agent,
    stored_trades,
    wait_until,
)

SYMBOLS = [f"S{i:02d}USDT" for i in range(20)]
CHANNELS = ["trade", "aggTrade", "bookTicker", "kline_1s"]


def committed_offset(dsn: str, symbol: str, channel: str) -> int | None:
    rows = query(
        dsn,
        "SELECT last_seq FROM stream_offsets WHERE provider='binance' AND symbol=%s AND channel=%s",
        symbol,
        channel,
    )
    return rows[0][0] if rows else None


def caught_up(dsn: str, venue: FakeBinance, symbols: list[str]) -> bool:
    """True once the venue is stalled with nothing in flight and the committed
    trade offset of every symbol is the last id it sent."""
    if not venue.settled():  # a write under way is recorded as sent when it ends
        return False
    behind = {
        s: (committed_offset(dsn, s, "trade"), venue.truth.trade_ids(s)[-1])
        for s in symbols
        if committed_offset(dsn, s, "trade") != venue.truth.trade_ids(s)[-1]
    }
    if behind:
        print("behind (committed, sent):", behind)
    return not behind


def assert_trades_match_venue(dsn: str, venue: FakeBinance, symbol: str) -> None:
    sent = venue.sent_trades(symbol)
    assert sent, f"venue sent no trades for {symbol}"
    stored = stored_trades(dsn, symbol, "trade")
    assert [t[0] for t in stored] == [t.id for t in sent]  # every id, once, nothing else
    for (trade_id, price, size), truth in zip(stored, sent, strict=True):
        assert (price, size) == (Decimal(truth.p), Decimal(truth.q)), trade_id
    # Exact text kept, not only the numeric value.
    text = query(
        dsn,
        "SELECT price::text FROM trades WHERE symbol=%s AND channel='trade' AND trade_id=%s",
        symbol,
        str(sent[0].id),
    )
    assert text == [(sent[0].p,)]


def assert_book_updates_match_venue(dsn: str, venue: FakeBinance, symbol: str) -> None:
    """Every bookTicker update id the venue sent for ``symbol`` is stored, once."""
    quotes = query(
        dsn,
        "SELECT seq FROM quotes WHERE symbol=%s AND channel='bookTicker' ORDER BY seq",
        symbol,
    )
    assert [q[0] for q in quotes] == sorted(set(venue.truth.book_update_ids(symbol)))


async def test_twenty_symbols_all_channels_exactly_once(fresh_db_dsn: str) -> None:
    dsn = fresh_db_dsn
    venue = FakeBinance(symbols=SYMBOLS, seed=11, events_per_s=2000)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            config = make_config([binance_source(ws_url, SYMBOLS, CHANNELS)])
            async with running_agent(config, dsn):
                # Run until at least two 1 s bars closed for every symbol.
                await wait_until(
                    lambda: all(len(venue.truth.final_klines(s, "1s")) >= 2 for s in SYMBOLS)
                )
                venue.stall(3600)  # stop sending, then let the agent catch up
                await wait_until(lambda: caught_up(dsn, venue, SYMBOLS))
            nursery.cancel_scope.cancel()

    for symbol in SYMBOLS:
        assert_trades_match_venue(dsn, venue, symbol)
        agg_ids = [
            r[0]
            for r in query(
                dsn,
                "SELECT trade_id::bigint FROM trades WHERE symbol=%s"
                " AND channel='aggTrade' ORDER BY 1",
                symbol,
            )
        ]
        assert agg_ids == venue.truth.agg_ids(symbol)
        assert committed_offset(dsn, symbol, "aggTrade") == venue.truth.agg_ids(symbol)[-1]
        quotes = query(
            dsn,
            "SELECT seq FROM quotes WHERE symbol=%s AND channel='bookTicker' ORDER BY seq",
            symbol,
        )
        assert [q[0] for q in quotes] == sorted(set(venue.truth.book_update_ids(symbol)))
        finals = venue.truth.final_klines(symbol, "1s")
        bars = {
            int(r[0]): r[1:]
            for r in query(
                dsn,
                "SELECT (extract(epoch FROM ts) * 1000)::bigint, open, high, low, close, volume,"
                " trade_count, final FROM candles WHERE symbol=%s AND interval='1s'",
                symbol,
            )
        }
        for bar in finals:
            assert bars[bar["t"]] == (
                Decimal(bar["o"]),
                Decimal(bar["h"]),
                Decimal(bar["l"]),
                Decimal(bar["c"]),
                Decimal(bar["v"]),
                bar["n"],
                True,
            )
    gaps = query(dsn, "SELECT count(*) FROM fetch_jobs WHERE channel IN ('trade', 'aggTrade')")
    assert gaps == [(0,)]
    assert query(dsn, "SELECT count(*) FROM dead_letter") == [(0,)]


async def test_disconnects_duplicates_shutdown_and_skips(fresh_db_dsn: str) -> None:
    dsn = fresh_db_dsn
    symbols = ["BTCUSDT", "ETHUSDT"]
    faults = BinanceFaults(
        disconnect_every_frames=300,
        duplicate_every_frames=7,
    )
    venue = FakeBinance(symbols=symbols, seed=5, events_per_s=3000, faults=faults)
    base = venue.market("BTCUSDT").next_trade_id
    venue.set_faults(skip_trade_ids=(base + 500, base + 520), skip_symbol="BTCUSDT")
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            config = make_config([binance_source(ws_url, symbols, ["trade", "aggTrade"])])
            async with running_agent(config, dsn) as agent:
                await wait_until(lambda: all(len(venue.truth.trade_ids(s)) > 1500 for s in symbols))
                venue.request_server_shutdown()
                await wait_until(lambda: all(len(venue.truth.trade_ids(s)) > 2500 for s in symbols))
                venue.stall(3600)
                await wait_until(lambda: caught_up(dsn, venue, symbols))
                assert agent.supervisor is not None
                reconnects = sum(t.connects for t in agent.supervisor.tasks.values())
            nursery.cancel_scope.cancel()

    assert reconnects > 5
    for symbol in symbols:
        assert_trades_match_venue(dsn, venue, symbol)
    skipped = venue.truth.skipped_trade_ids("BTCUSDT")
    assert skipped == list(range(base + 500, base + 521))
    gaps = await aquery(
        dsn, "SELECT symbol, from_seq, to_seq, status FROM fetch_jobs WHERE channel = 'trade'"
    )
    assert ("BTCUSDT", base + 500, base + 520, "pending") in gaps
    # Disconnects lose what was in flight (the market trades on meanwhile):
    # every id the venue did not deliver lies in a recorded gap, and no gap
    # covers an id that was delivered.
    for symbol in symbols:
        sent = set(venue.truth.trade_ids(symbol))
        missing = set(range(min(sent), max(sent) + 1)) - sent
        covered = {i for g in gaps if g[0] == symbol for i in range(g[1], g[2] + 1)}
        assert covered == missing, symbol


async def test_malformed_frames_go_to_dead_letter(fresh_db_dsn: str) -> None:
    dsn = fresh_db_dsn
    venue = FakeBinance(
        symbols=["BTCUSDT"],
        seed=3,
        events_per_s=2000,
        faults=BinanceFaults(malformed_every_frames=50),
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            config = make_config([binance_source(ws_url, ["BTCUSDT"], ["trade"], archive_raw=True)])
            async with running_agent(config, dsn):
                await wait_until(lambda: len(venue.truth.malformed_frames) >= 9)
                venue.stall(3600)
                await wait_until(lambda: len(query(dsn, "SELECT 1 FROM dead_letter")) >= 9)
                await wait_until(lambda: caught_up(dsn, venue, ["BTCUSDT"]))
            nursery.cancel_scope.cancel()
    reasons = [r[0] for r in query(dsn, "SELECT reason FROM dead_letter")]
    kinds = {m["kind"] for m in venue.truth.malformed_frames}
    assert len(reasons) == len(venue.truth.malformed_frames)
    assert kinds == {"invalid_json", "bad_price", "missing_field"}
    assert any("not valid JSON" in r for r in reasons)
    assert any("price" in r for r in reasons)
    # A malformed frame replaced a trade: that id is missing on the stream and
    # is recorded as a gap, while the stream went on.
    assert_trades_match_venue(dsn, venue, "BTCUSDT")
    gaps = query(dsn, "SELECT count(*) FROM fetch_jobs WHERE channel='trade'")
    assert gaps[0][0] >= 1
    # archive_raw: every frame, good or bad, is in trades_raw as received.
    raw = {r[0] for r in query(dsn, "SELECT payload FROM trades_raw")}
    dead_payloads = {r[0] for r in query(dsn, "SELECT payload FROM dead_letter")}
    assert dead_payloads <= raw
    stored = query(dsn, "SELECT count(*) FROM trades WHERE symbol = 'BTCUSDT'")[0][0]
    assert len(raw) >= stored + len(dead_payloads)
