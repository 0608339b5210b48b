"""The fake Polygon venue's replayed tape (``fake-venue --replay``, the bench's max-rate venue).

A replay must look to the agent like a live market: every pass new events
with new natural keys, times moving forward a minute a pass, one closed bar
per ticker per pass, and the agent's own parser reading every element.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
import trio

from mdagent.records import Candle, DeadLetter, Quote, Trade
from mdagent.testing.polygon.eventlog import EventLog
from mdagent.testing.polygon.marketgen import WsEvent
from mdagent.testing.polygon.replay import _CHUNK, ReplayMarket
from mdagent.testing.polygon.venue import FakePolygon
from mdagent.testing.venue import serving
from tests.test_cli import mdagent
from tests.test_fake_polygon import PARSER, client

TICKERS = ["AAPL", "MSFT", "SPY", "GTE"]
NOW_NS = 1_772_550_000_123_456_789  # 2026-03-03, mid-minute
MINUTE_MS = 60_000


def played(replay: ReplayMarket, steps: int) -> list[dict[str, Any]]:
    out: list[WsEvent] = []
    replay.run(out, steps)
    return [json.loads(e.text) for e in out]


def test_each_pass_is_the_tape_a_minute_later_with_new_keys() -> None:
    replay = ReplayMarket(TICKERS, 7, events=3_000, now_ns=NOW_NS)
    tape = len(replay._tape)
    passes = [played(replay, tape) for _ in range(3)]
    assert replay.span_ms == MINUTE_MS
    for k, events in enumerate(passes[1:], start=1):
        for first, again in zip(passes[0], events, strict=True):
            moved = {f for f in first if first[f] != again[f]}
            if first["ev"] in ("T", "Q"):
                assert moved <= {"t", "trft", "q"}, (first, again)
                assert again["t"] - first["t"] == k * MINUTE_MS
                assert again["q"] - first["q"] == k * replay.q_span
            else:
                assert moved == {"s", "e"}, (first, again)
                assert again["s"] - first["s"] == k * MINUTE_MS
    everything = [e for events in passes for e in events]
    trade_keys = [
        (e["sym"], e["x"], e.get("trfi"), e["i"], e["t"]) for e in everything if e["ev"] == "T"
    ]
    quote_keys = [(e["sym"], e["q"]) for e in everything if e["ev"] == "Q"]
    assert len(set(trade_keys)) == len(trade_keys) > 1_000
    assert len(set(quote_keys)) == len(quote_keys) > 1_000
    # SIP sequence numbers keep rising per ticker from pass to pass.
    for ticker in TICKERS:
        seqs = [e["q"] for e in everything if e["ev"] == "Q" and e["sym"] == ticker]
        assert max(seqs[: len(seqs) // 3]) < min(seqs[2 * len(seqs) // 3 :])


def test_each_pass_closes_a_minute_bar_of_every_ticker() -> None:
    replay = ReplayMarket(TICKERS, 7, events=3_000, now_ns=NOW_NS)
    tape = len(replay._tape)
    minutes = []
    for _ in range(2):
        bars = [e for e in played(replay, tape) if e["ev"] == "AM"]
        assert all(b["s"] % MINUTE_MS == 0 and b["e"] - b["s"] == MINUTE_MS for b in bars)
        # The minute the pass covers (other bars: corrections by late trades).
        minute = Counter(b["s"] for b in bars).most_common(1)[0][0]
        assert {b["sym"] for b in bars if b["s"] == minute} == set(TICKERS)
        minutes.append(minute)
    assert minutes[1] - minutes[0] == MINUTE_MS


def test_the_parser_reads_every_replayed_element() -> None:
    replay = ReplayMarket(TICKERS, 3, events=2_000, now_ns=NOW_NS)
    out: list[WsEvent] = []
    replay.run(out, 3 * len(replay._tape))
    frame = "[" + ",".join(e.text for e in out) + "]"
    records = PARSER.parse(frame, 0)
    assert not [r for r in records if isinstance(r, DeadLetter)]
    kinds = {type(r) for r in records}
    assert kinds == {Trade, Quote, Candle}


async def test_a_replaying_venue_streams_new_events_over_a_real_socket() -> None:
    venue = FakePolygon(symbols=TICKERS, events_per_s=0, replay_events=1_000, record_sent=False)
    async with serving(venue), client(venue, "T.*,Q.*") as ws:
        records: list[Trade | Quote] = []
        with trio.fail_after(60):
            while len(records) < 3_500:  # past three passes of the tape
                for r in PARSER.parse(await ws.get_message(), 0):
                    assert isinstance(r, Trade | Quote), r
                    records.append(r)
    trades = [(r.symbol, r.trade_id, r.ts_ns) for r in records if isinstance(r, Trade)]
    quotes = [(r.symbol, r.seq) for r in records if isinstance(r, Quote)]
    assert len(set(trades)) == len(trades)
    assert len(set(quotes)) == len(quotes)
    assert venue.stats()["market_steps"] >= 3_500


def test_a_replaying_venue_keeps_no_ground_truth() -> None:
    with pytest.raises(ValueError, match="record_sent=False"):
        FakePolygon(symbols=TICKERS, replay_events=1_000)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay", "1000"], "fake-venue --replay needs --no-record-sent"),
        (["--replay", "5", "--no-record-sent"], "must be 0 (off) or 1000 .. 1,000,000, got 5"),
        (["--replay", "x", "--no-record-sent"], "expected an integer, got 'x'"),
    ],
)
def test_fake_venue_replay_options_are_checked(args: list[str], message: str) -> None:
    result = mdagent("fake-venue", "polygon", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_chunked_rendering_is_the_tape_shifted_event_by_event() -> None:
    """Played in uneven steps across chunk and pass boundaries, every text is
    byte for byte the tape's text with each moved field shifted by the pass
    (an independent per-event rendering), next to its own key and event."""
    replay = ReplayMarket(TICKERS, 5, events=2_500, now_ns=NOW_NS)
    tape = list(replay._tape)
    assert len(tape) > 2 * _CHUNK and len(tape) % _CHUNK, "several chunks, the last partial"
    shifts = {"t": replay.span_ms, "trft": replay.span_ms, "s": replay.span_ms}
    shifts |= {"e": replay.span_ms, "q": replay.q_span}

    def shifted(event: WsEvent, k: int) -> str:
        fields = "t|trft|q" if event.ev in ("T", "Q") else "s|e"

        def move(m: re.Match[str]) -> str:
            return f'"{m[1]}":{int(m[2]) + k * shifts[m[1]]}'

        return re.sub(f'"({fields})":(\\d+)', move, event.text)

    total = 2 * len(tape) + len(tape) // 2
    log = EventLog()
    steps = [1, 37, _CHUNK - 1, _CHUNK, _CHUNK + 1, 3 * _CHUNK + 5, 3]
    while len(log) < total:
        replay.play(log, min(steps[len(log) % len(steps)], total - len(log)))
    assert len(log) == total == replay.steps
    for i, (key, text, event) in enumerate(zip(log.keys, log.texts, log.events, strict=True)):
        first = tape[i % len(tape)]
        assert event is first
        assert key == f"{first.ev}.{first.ticker}"
        assert text == shifted(first, i // len(tape)), i
    # run() plays on from where play() stopped, as WsEvents.
    out: list[WsEvent] = []
    replay.run(out, len(tape))
    k, at = divmod(total, len(tape))
    expected = [
        shifted(tape[(at + n) % len(tape)], k + (at + n) // len(tape)) for n in range(len(tape))
    ]
    assert [e.text for e in out] == expected


async def test_a_replaying_venue_sends_exactly_the_subscribed_tape_events_in_order() -> None:
    """A mixed subscription (one pair, a star, a bar pair) gets, byte for byte
    and in tape order over more than two passes, the tape's events it selects."""
    venue = FakePolygon(
        symbols=TICKERS,
        events_per_s=0,
        replay_events=1_000,
        record_sent=False,
        clock_ns=lambda: NOW_NS,
    )
    reference = ReplayMarket(TICKERS, 1, events=1_000, now_ns=NOW_NS)
    played: list[WsEvent] = []
    reference.run(played, 3 * len(reference._tape))
    wanted = {("T", "AAPL"), ("AM", "SPY")}
    expected = [e.text for e in played if e.ev == "Q" or (e.ev, e.ticker) in wanted]
    assert {e.ev for e in played} >= {"T", "Q", "AM", "A"}
    sent: list[str] = []
    async with serving(venue), client(venue, "T.AAPL,Q.*,AM.SPY") as ws:
        with trio.fail_after(60):
            while sum(frame.count('"ev":') for frame in sent) < len(expected):
                frame = await ws.get_message()
                assert isinstance(frame, str)
                assert frame.startswith("[") and frame.endswith("]"), frame[:80]
                sent.append(frame)
    body = ",".join(frame[1:-1] for frame in sent)
    assert body.startswith(",".join(expected))
