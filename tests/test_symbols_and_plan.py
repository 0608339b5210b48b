"""Symbols as the providers really spell them, and Binance connection plans (issue 9, 4 and 6).

Config rules and URL encoding at the unit level; then the agent against the
fake Binance venue and a real PostgreSQL with a non-ASCII symbol, and with a
source too big for one connection; and ``check-config`` printing the plan.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from mdagent.config import parse_config
from mdagent.errors import ConfigError
from mdagent.providers.binance.io import BinanceAdapter
from mdagent.providers.binance.plan import (
    MAX_STREAMS_PER_CONNECTION,
    MAX_URL_CHARS,
    connection_urls,
)
from mdagent.providers.binance.sansio import BinanceParser
from mdagent.providers.polygon.sansio import subscribe_message
from mdagent.records import DeadLetter, Trade
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import binance_source, make_config, query, running_agent, wait_until

CHINESE = "测试币六USDT"
ENCODED = "%E6%B5%8B%E8%AF%95%E5%B8%81%E5%85%ADusdt@trade"
FOUR = ["trade", "aggTrade", "bookTicker", "kline_1m"]


def source_table(provider: str, symbols: list[str], channels: list[str]) -> dict[str, object]:
    table: dict[str, object] = {"provider": provider, "symbols": symbols, "channels": channels}
    if provider == "polygon":
        table["api_key_env"] = "PATH"  # set in every test environment
    return {"sources": [table]}


def test_binance_utf8_symbol_is_accepted_and_percent_encoded_in_the_url() -> None:
    config = parse_config(source_table("binance", [CHINESE], ["trade"]))
    [url] = BinanceAdapter().connection_urls(config.sources[0])
    assert url == f"wss://data-stream.binance.vision/stream?streams={ENCODED}"
    url.encode("ascii")  # an upgrade request line can carry it


@pytest.mark.parametrize("ticker", ["BRK.A", "BCpC", "AAPLw", "BF.B", "X:BTC-USD", "*", "a"])
def test_polygon_tickers_with_dots_and_lowercase_suffixes_keep_their_case(ticker: str) -> None:
    config = parse_config(source_table("polygon", [ticker], ["T"]))
    assert config.sources[0].symbols == (ticker,)
    assert f'"T.{ticker}"' in subscribe_message(["T"], [ticker])


@pytest.mark.parametrize(
    ("provider", "symbol"),
    [
        ("binance", "BTC USDT"),
        ("binance", "btc@trade"),
        ("binance", "BTC/USDT"),
        ("binance", "A" * 41),
        ("binance", ""),
        ("polygon", "AAPL,MSFT"),
        ("polygon", "AA PL"),
        ("polygon", ".A"),
    ],
)
def test_symbols_that_would_break_a_stream_name_or_url_are_refused(
    provider: str, symbol: str
) -> None:
    with pytest.raises(ConfigError, match=r"sources\[0\]\.symbols\[0\]: invalid symbol"):
        parse_config(source_table(provider, [symbol], ["trade" if provider == "binance" else "T"]))


def test_binance_frames_route_to_the_configured_non_ascii_symbol() -> None:
    parser = BinanceParser(symbols=[CHINESE])
    frame = (
        '{"stream":"测试币六usdt@trade","data":{"e":"trade","E":1,"s":"测试币六USDT",'
        '"t":5,"p":"0.5","q":"2","T":1764345600250,"m":false,"M":true}}'
    )
    [trade] = parser.parse(frame.encode(), 1)
    assert isinstance(trade, Trade)
    assert (trade.symbol, trade.trade_id, trade.price) == (CHINESE, "5", "0.5")
    # A stream this connection did not subscribe to is a dead letter, not a record.
    other = frame.replace("测试币六usdt@", "btcusdt@").replace(
        '"s":"测试币六USDT"', '"s":"BTCUSDT"'
    )
    [letter] = parser.parse(other, 1)
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "stream: 'btcusdt@trade' is not subscribed on this connection"


def test_plan_of_256_symbols_by_four_channels_respects_both_limits() -> None:
    symbols = [f"SYMBOL{i:03d}USDT" for i in range(256)]
    config = parse_config(source_table("binance", symbols, FOUR))
    urls = BinanceAdapter().connection_urls(config.sources[0])
    assert len(urls) == 3
    streams = [u.partition("streams=")[2].split("/") for u in urls]
    assert [n for group in streams for n in group] == [
        f"{s.lower()}@{c}" for s in symbols for c in FOUR
    ]
    assert all(len(u) <= MAX_URL_CHARS for u in urls)
    assert all(u.count("@") <= MAX_STREAMS_PER_CONNECTION for u in urls)
    # Where the length allows more, the stream count binds.
    names = [f"s{i}@{c}" for i in range(300) for c in FOUR]
    wide = connection_urls("ws://h", names, max_chars=10**6)
    assert [u.count("@") for u in wide] == [MAX_STREAMS_PER_CONNECTION, 1200 - 1024]


def test_check_config_prints_the_connection_plan(tmp_path: Path) -> None:
    import subprocess

    symbols = ", ".join(f'"SYMBOL{i:03d}USDT"' for i in range(256))
    path = tmp_path / "big.toml"
    path.write_text(
        f'[[sources]]\nprovider = "binance"\nsymbols = [{symbols}, "{CHINESE}"]\n'
        'channels = ["trade", "aggTrade", "bookTicker", "kline_1m"]\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mdagent", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [source] = json.loads(result.stdout)["sources"]
    connections = source["connections"]
    assert len(connections) == 3
    assert all(c["url_chars"] == len(c["url"]) <= MAX_URL_CHARS for c in connections)
    assert connections[-1]["url"].endswith(ENCODED.replace("@trade", "@kline_1m"))


async def test_agent_records_a_non_ascii_symbol_end_to_end(fresh_db_dsn: str) -> None:
    dsn = fresh_db_dsn
    symbols = [CHINESE, "BTCUSDT"]
    venue = FakeBinance(symbols=symbols, seed=3, events_per_s=2000)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            config = make_config([binance_source(ws_url, symbols, ["trade"])])
            async with running_agent(config, dsn):
                await wait_until(lambda: len(venue.truth.trade_ids(CHINESE)) >= 20, timeout=50)
                venue.stall(3600)

                def stored() -> list[int]:
                    rows = query(
                        dsn,
                        "SELECT trade_id::bigint FROM trades WHERE symbol = %s ORDER BY 1",
                        CHINESE,
                    )
                    return [r[0] for r in rows]

                # The venue's record of what it sent is read at each poll.
                await wait_until(lambda: stored() == venue.truth.trade_ids(CHINESE))
            nursery.cancel_scope.cancel()
    assert query(dsn, "SELECT count(*) FROM dead_letter") == [(0,)]


async def test_agent_spreads_a_big_source_over_several_connections(fresh_db_dsn: str) -> None:
    dsn = fresh_db_dsn
    symbols = [f"S{i:03d}USDT" for i in range(260)]  # 1,040 streams: over 1,024
    venue = FakeBinance(symbols=symbols, seed=5, events_per_s=300)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            ws_url, _rest = await nursery.start(venue.serve)
            source = binance_source(ws_url, symbols, FOUR)
            plan = BinanceAdapter().connection_urls(source)
            assert len(plan) == 3  # ~17,700 characters of stream names
            async with running_agent(make_config([source]), dsn):
                # Both connections deliver: the first and the last symbol are stored.
                await wait_until(
                    lambda: (
                        query(
                            dsn,
                            "SELECT count(DISTINCT symbol) FROM trades"
                            " WHERE symbol IN ('S000USDT', 'S259USDT')",
                        )
                        == [(2,)]
                    ),
                    timeout=60,
                )
            nursery.cancel_scope.cancel()
    assert venue.counters["rejected_long_uris"] == 0
    assert venue.counters["connections"] == len(plan)
