"""Per-stream health and the expected-activity rule (pipeline/streams.py), on explicit times."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mdagent.config import SourceConfig
from mdagent.pipeline.batches import FrameBatch, WriteBatch
from mdagent.pipeline.streams import StreamCollector, StreamRegistry, stream_keys
from mdagent.providers.binance.sansio import BinanceParser
from mdagent.records import Trade

QUIET = 10.0
SOURCE = SourceConfig(
    provider="binance",
    symbols=("btcusdt", "ethusdt"),
    channels=("trade",),
    name="spot",
    quiet_time_s=QUIET,
)
BTC = ("binance", "BTCUSDT", "trade")
ETH = ("binance", "ETHUSDT", "trade")


def trade(symbol: str, seq: int, ts_ns: int = 1_000) -> Trade:
    return Trade("binance", symbol, "trade", str(seq), seq, ts_ns, "1", "1", ts_ns)


def feed(registry: StreamRegistry, now: float, *trades: Trade, received_ns: int = 5) -> None:
    out = WriteBatch()
    out.add(trades)
    batch = FrameBatch(SOURCE, BinanceParser(), [("{}", received_ns)])
    registry.observe(batch, out, now)


def registry_at(now: float) -> StreamRegistry:
    registry = StreamRegistry()
    registry.attach(SOURCE, now)
    return registry


def test_stream_keys_are_spelled_as_records_spell_them_and_skip_wildcards() -> None:
    assert stream_keys(SOURCE) == [BTC, ETH]
    polygon = SourceConfig(provider="polygon", symbols=("BRK.A", "*"), channels=("T", "Q"))
    assert stream_keys(polygon) == [("polygon", "BRK.A", "T"), ("polygon", "BRK.A", "Q")]


def test_counts_per_stream_once_per_batch_with_both_clocks() -> None:
    registry = registry_at(0.0)
    feed(registry, 1.0, trade("BTCUSDT", 1, 100), trade("BTCUSDT", 2, 200), trade("ETHUSDT", 7))
    feed(registry, 2.0, trade("SOLUSDT", 1))  # not configured: not tracked
    btc = registry.streams[BTC]
    assert (btc.events, btc.last_event_ns, btc.last_receive_ns, btc.last_seen_at) == (
        2,
        200,
        5,
        1.0,
    )
    assert registry.streams[ETH].events == 1
    assert set(registry.streams) == {BTC, ETH}
    # The rate is over windows of RATE_WINDOW_S (10 s): 2 + 3 records from 0 to 12 s.
    feed(registry, 12.0, trade("BTCUSDT", 3), trade("BTCUSDT", 4), trade("BTCUSDT", 5))
    assert btc.rate == 5 / 12


def test_silent_stream_resubscribed_then_reconnected_then_taken_for_quiet() -> None:
    registry = registry_at(0.0)
    # BTC flowed (two bursts: it has a pace), then falls silent.
    feed(registry, 0.0, trade("BTCUSDT", 0), trade("ETHUSDT", 0))
    feed(registry, 1.0, trade("BTCUSDT", 1), trade("ETHUSDT", 1))
    now = 1.0
    actions = []
    while now < 60:
        now += 1.0
        feed(registry, now, trade("ETHUSDT", int(now)))  # ETH flows, BTC is silent
        for stream, action in registry.check("spot", now, QUIET):
            actions.append((now, stream.key, action))
        if now == 13.0:
            assert [p.split(" (")[0] for p in registry.problems(now)] == ["binance:BTCUSDT:trade"]
    # Missing after more than QUIET s of silence (from 1 s): resubscribed at 12 s,
    # connection replaced QUIET s later; QUIET s after that it counts as quiet.
    assert actions == [(12.0, BTC, "resubscribe"), (23.0, BTC, "reconnect")]
    assert registry.streams[BTC].state == "quiet"
    assert registry.problems(now) == []
    # Its next record re-arms the rule.
    feed(registry, now, trade("BTCUSDT", 2))
    assert registry.streams[BTC].state == "ok"


def test_no_action_while_every_stream_of_the_source_is_silent() -> None:
    """A silent connection is the stale watchdog's business, not one stream's."""
    registry = registry_at(0.0)
    feed(registry, 1.0, trade("BTCUSDT", 1), trade("ETHUSDT", 1))
    assert registry.check("spot", 100.0, QUIET) == []
    assert registry.problems(100.0) == []


def test_an_illiquid_symbol_is_judged_by_its_own_pace() -> None:
    """BTC traded every 5 s: missing only after 10 mean intervals (50 s), not after QUIET."""
    registry = registry_at(0.0)
    for t in range(0, 31, 5):
        feed(registry, float(t), trade("BTCUSDT", t + 1), trade("ETHUSDT", t + 1))
    actions = []
    for t in range(31, 91):
        feed(registry, float(t), trade("ETHUSDT", t + 1))
        actions += [(t, a) for _s, a in registry.check("spot", float(t), QUIET)]
    assert actions == [(81, "resubscribe")]


def test_a_symbol_trading_in_bursts_is_judged_by_its_bursts_not_its_records() -> None:
    """BTC trades 40 records at once every 30 s: its pace is one burst per 30 s
    (missing after 300 s), not one record per 0.75 s (missing after QUIET)."""
    registry = registry_at(0.0)
    actions = []
    for t in range(0, 121):
        trades = [trade("ETHUSDT", t + 1)]
        if t % 30 == 0:
            trades += [trade("BTCUSDT", t * 100 + i) for i in range(40)]
        feed(registry, float(t), *trades)
        actions += [(t, a) for _s, a in registry.check("spot", float(t), QUIET)]
    # The first pause: no pace known yet (one burst), so a resubscribe only.
    assert actions == [(11, "resubscribe")]
    assert registry.streams[BTC].state == "ok"


def test_a_symbol_that_traded_once_is_not_reconnected_for() -> None:
    """One burst is no pace: BTC, quiet from the start, trades once and falls
    silent again. Subscribed again, then taken for quiet; never a reconnect
    (on Polygon, one connection per key, that costs every ticker a gap)."""
    registry = registry_at(0.0)
    actions = []
    for t in range(1, 100):
        trades = [trade("ETHUSDT", t)] + ([trade("BTCUSDT", t)] * 3 if t == 40 else [])
        feed(registry, float(t), *trades)
        actions += [(t, a) for _s, a in registry.check("spot", float(t), QUIET)]
    assert actions == [(11, "resubscribe"), (51, "resubscribe")]
    assert registry.streams[BTC].state == "quiet"


def test_a_stream_never_seen_is_not_reconnected_for() -> None:
    registry = registry_at(0.0)
    actions = []
    for t in range(1, 40):
        feed(registry, float(t), trade("ETHUSDT", t))
        actions += [(t, a) for _s, a in registry.check("spot", float(t), QUIET)]
    assert actions == [(11, "resubscribe")]
    assert registry.streams[BTC].state == "quiet"


def test_rule_off_at_zero_and_streams_follow_the_config() -> None:
    registry = registry_at(0.0)
    feed(registry, 1.0, trade("ETHUSDT", 1))
    assert registry.check("spot", 100.0, 0.0) == []
    narrower = SourceConfig(
        provider="binance", symbols=("ethusdt",), channels=("trade",), name="spot"
    )
    registry.attach(narrower, 2.0)
    assert set(registry.streams) == {ETH}
    assert registry.streams[ETH].events == 1  # history kept across a reload
    registry.detach("spot")
    assert registry.streams == {}


def test_detail_and_metrics_per_stream() -> None:
    registry = registry_at(0.0)
    feed(registry, 1.0, trade("BTCUSDT", 1, ts_ns=1_000_000_000), received_ns=2_000_000_000)
    detail = registry.detail(wall_ns=3_000_000_000)
    assert detail[0] == {
        "provider": "binance",
        "symbol": "BTCUSDT",
        "channel": "trade",
        "source": "spot",
        "state": "ok",
        "last_event_age_s": 2.0,
        "last_receive_age_s": 1.0,
        "events_per_s": 0.0,
        "events_total": 1,
    }
    assert detail[1]["last_event_age_s"] is None
    prom = CollectorRegistry()
    prom.register(StreamCollector(registry))
    text = generate_latest(prom).decode()
    labels = 'channel="trade",provider="binance",symbol="BTCUSDT"'
    assert f"mdagent_stream_events_total{{{labels}}} 1.0" in text
    assert f"mdagent_stream_missing{{{labels}}} 0.0" in text
    assert f"mdagent_stream_last_event_age_seconds{{{labels}}}" in text
    assert (
        'mdagent_stream_last_event_age_seconds{channel="trade",provider="binance",symbol="ETHUSDT"}'
        not in text
    )


def test_two_channels_of_one_kind_are_counted_apart() -> None:
    """trade and aggTrade both land in trades: counted by their full key."""
    source = SourceConfig(
        provider="binance", symbols=("btcusdt",), channels=("trade", "aggTrade"), name="two"
    )
    registry = StreamRegistry()
    registry.attach(source, 0.0)
    agg = Trade("binance", "BTCUSDT", "aggTrade", "9", 9, 1, "1", "1", 1)
    out = WriteBatch()
    out.add([trade("BTCUSDT", 1), trade("BTCUSDT", 2), agg])
    registry.observe(FrameBatch(source, BinanceParser(), [("{}", 5)]), out, 1.0)
    assert registry.streams[BTC].events == 2
    assert registry.streams[("binance", "BTCUSDT", "aggTrade")].events == 1
