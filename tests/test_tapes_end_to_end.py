"""Issue 9's inputs end to end: scripted venue frames -> the real agent -> PostgreSQL.

Each test plays the exact frames of one input (``mdagent.testing.tape_venue``)
and checks the rows the database holds afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.lowlevel

from mdagent.config import SourceConfig
from mdagent.pipeline.agent import Agent
from mdagent.testing.tape_venue import TapeItem, TapeVenue, binary_frame, text_frame
from tests.agent_support import (
    binance_source,
    make_config,
    polygon_source,
    query,
    running_agent,
    wait_until,
)

KEY_ENV = "MDAGENT_TEST_TAPE_KEY"


def metric(agent: Agent, name: str, **labels: str) -> float:
    value = agent.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def play(
    dsn: str,
    venue: TapeVenue,
    make_source: Callable[[str], SourceConfig],
    *done: Callable[[], bool],
) -> list[dict[str, float]]:
    """Serve ``venue``; run one agent per ``done`` predicate, one after the other
    (a restart between), each until its predicate holds. Returns each agent's
    figures (connections, refused frames, duplicates dropped)."""
    figures: list[dict[str, float]] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ws_url = await nursery.start(venue.serve)
            source = make_source(ws_url)
            for until in done:
                async with running_agent(make_config([source]), dsn) as agent:
                    await wait_until(until)
                    assert agent.supervisor is not None
                    figures.append(
                        {
                            "connects": agent.supervisor.tasks[source.key].connects,
                            "dups": sum(
                                metric(
                                    agent,
                                    "mdagent_duplicates_dropped_total",
                                    provider=source.provider,
                                    channel=ch,
                                )
                                for ch in source.channels
                            ),
                            **{
                                f"refused_{code}": metric(
                                    agent,
                                    "mdagent_frames_refused_total",
                                    source=source.key,
                                    code=str(code),
                                )
                                for code in (1007, 1009)
                            },
                        }
                    )
            nursery.cancel_scope.cancel()
    return figures


def rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return query(dsn, sql, *params)


# -- Polygon ---------------------------------------------------------------------------------


def polygon(ws_url: str, channels: Sequence[str] = ("T",)) -> SourceConfig:
    return polygon_source(ws_url, ["QRST"], list(channels), api_key_env=KEY_ENV)


async def test_two_trades_sharing_one_sequence_number_are_both_stored(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "tape-key")
    tape: list[TapeItem] = [
        '[{"ev":"T","sym":"QRST","i":"00500101","x":12,"p":21.5,"s":200,"t":1764345600250,"q":88001,"z":3}]',
        '[{"ev":"T","sym":"QRST","i":"00500102","x":12,"p":21.5,"s":40,"t":1764345600250,"q":88001,"z":3},'
        '{"ev":"T","sym":"QRST","i":"00500103","x":12,"p":21.51,"s":7,"c":[37],"t":1764345600251,"q":88002,"z":3}]',
    ]
    venue = TapeVenue("polygon", [tape])
    sql = "SELECT trade_id, seq, price, size, conditions FROM trades ORDER BY trade_id"
    [figures] = await play(fresh_db_dsn, venue, polygon, lambda: len(rows(fresh_db_dsn, sql)) == 3)
    assert rows(fresh_db_dsn, sql) == [
        ("12::00500101", 88001, Decimal("21.5"), Decimal(200), None),
        ("12::00500102", 88001, Decimal("21.5"), Decimal(40), None),
        ("12::00500103", 88002, Decimal("21.51"), Decimal(7), [37]),
    ]
    assert figures["dups"] == 0


MONDAY = [
    '[{"ev":"T","sym":"QRST","i":"5001","x":4,"p":10.5,"s":100,"t":1796085000000,"q":3800000}]',
    '[{"ev":"T","sym":"QRST","i":"5002","x":4,"p":10.5,"s":100,"t":1796085910000,"q":3800050},'
    '{"ev":"Q","sym":"QRST","bx":4,"bp":10.49,"bs":100,"ax":4,"ap":10.51,"as":200,"t":1796085910500,"q":3800051}]',
]
TUESDAY = [
    '[{"ev":"T","sym":"QRST","i":"11","x":4,"p":10.6,"s":100,"t":1796115601000,"q":12}]',
    '[{"ev":"Q","sym":"QRST","bx":4,"bp":10.59,"bs":100,"ax":4,"ap":10.61,"as":200,"t":1796115601500,"q":13}]',
    '[{"ev":"T","sym":"QRST","i":"12","x":4,"p":10.6,"s":300,"t":1796115602000,"q":15}]',
]


@pytest.mark.parametrize("restart", [False, True], ids=["one_run", "restart_between"])
async def test_new_york_session_reset_on_the_same_utc_day_keeps_tuesday(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch, restart: bool
) -> None:
    # EST: Monday 19:30 ET = Tuesday 00:30 UTC, the UTC day of Tuesday 04:00 ET.
    monkeypatch.setenv(KEY_ENV, "tape-key")
    dsn = fresh_db_dsn
    tapes = [MONDAY, TUESDAY] if restart else [MONDAY + TUESDAY]
    venue = TapeVenue("polygon", tapes)

    def stored(trades: int, quotes: int) -> Callable[[], bool]:
        return lambda: (
            rows(dsn, "SELECT count(*) FROM trades") == [(trades,)]
            and rows(dsn, "SELECT count(*) FROM quotes") == [(quotes,)]
        )

    waits = [stored(2, 1), stored(4, 2)] if restart else [stored(4, 2)]
    figures = await play(dsn, venue, lambda url: polygon(url, ("T", "Q")), *waits)
    assert rows(dsn, "SELECT seq FROM trades ORDER BY ts") == [(3800000,), (3800050,), (12,), (15,)]
    assert rows(dsn, "SELECT seq FROM quotes ORDER BY ts") == [(3800051,), (13,)]
    assert rows(dsn, "SELECT channel, last_seq, last_ts_ns FROM stream_offsets ORDER BY 1") == [
        ("Q", 13, 1_796_115_601_500_000_000),
        ("T", 15, 1_796_115_602_000_000_000),
    ]
    assert all(f["dups"] == 0 for f in figures)


async def test_whole_sizes_in_exponent_and_float_form_are_stored_exactly(
    fresh_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "tape-key")
    tape: list[TapeItem] = [
        '[{"ev":"T","sym":"QRST","i":"1","x":4,"p":1.5E+1,"s":2.405117e+06,"t":1764345600250,"q":1},'
        '{"ev":"T","sym":"QRST","i":"2","x":4,"p":1e-8,"s":300.0,"t":1764345600251,"q":2},'
        '{"ev":"T","sym":"QRST","i":"3","x":4,"p":15,"s":300.5,"t":1764345600252,"q":3}]',
    ]
    venue = TapeVenue("polygon", [tape])
    dsn = fresh_db_dsn
    await play(dsn, venue, polygon, lambda: rows(dsn, "SELECT count(*) FROM dead_letter") == [(1,)])
    await trio.lowlevel.checkpoint()
    assert rows(dsn, "SELECT trade_id, price::text, size::text FROM trades ORDER BY 1") == [
        ("4::1", "15", "2405117"),
        ("4::2", "0.00000001", "300"),
    ]
    [(source, reason)] = rows(dsn, "SELECT source, reason FROM dead_letter")
    assert source == "T"
    assert "`s` must be a whole number, got 300.5" in reason


# -- Binance ---------------------------------------------------------------------------------


def binance_trade(trade_id: int, price: str = '"30000.01"') -> str:
    return (
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1764345600250,"s":"BTCUSDT",'
        f'"t":{trade_id},"p":{price},"q":"0.5","T":1764345600250,"m":false,"M":true}}}}'
    )


def binance(ws_url: str) -> SourceConfig:
    return binance_source(ws_url, ["BTCUSDT"], ["trade"])


def stored_ids(dsn: str) -> list[int]:
    return [r[0] for r in rows(dsn, "SELECT trade_id::bigint FROM trades ORDER BY 1")]


async def test_bad_frames_become_dead_letters_and_the_stream_goes_on(fresh_db_dsn: str) -> None:
    dsn = fresh_db_dsn
    tape: list[TapeItem] = [
        binance_trade(1),
        # Invalid UTF-8 inside data, in a binary frame: raised DecodeError before.
        binary_frame(b'{"stream":"btcusdt@trade","data":{"s":"\xff"}}'),
        binance_trade(2),
        binance_trade(3, price="1e400"),  # raised ValidationError from the error path before
        binance_trade(4),
    ]
    venue = TapeVenue("binance", [tape])
    [figures] = await play(
        dsn,
        venue,
        binance,
        lambda: (
            stored_ids(dsn) == [1, 2, 4] and rows(dsn, "SELECT count(*) FROM dead_letter") == [(2,)]
        ),
    )
    assert figures["connects"] == 1  # no reconnect: the stream went on
    reasons = [r[0] for r in rows(dsn, "SELECT reason FROM dead_letter ORDER BY received_at, id")]
    assert reasons[0].startswith("data: not valid JSON")
    assert reasons[1].startswith('data.p (price): expected a decimal string like "0.00100000"')


async def test_refused_frames_close_1007_and_1009_and_leave_dead_letters(
    fresh_db_dsn: str,
) -> None:
    dsn = fresh_db_dsn
    invalid_text = text_frame(b'{"stream":"btcusdt@trade","data":{"s":"\xff\xfe"}}')
    too_big = text_frame(b'{"stream":"btcusdt@trade","data":"' + b"x" * (2 << 20) + b'"}')
    venue = TapeVenue(
        "binance",
        [[binance_trade(1), invalid_text], [binance_trade(2), too_big], [binance_trade(3)]],
    )
    [figures] = await play(
        dsn,
        venue,
        binance,
        lambda: (
            stored_ids(dsn) == [1, 2, 3] and rows(dsn, "SELECT count(*) FROM dead_letter") == [(2,)]
        ),
    )
    assert venue.client_close_codes[:2] == [1007, 1009]  # then 1000 at shutdown
    assert (figures["refused_1007"], figures["refused_1009"]) == (1, 1)
    letters = rows(dsn, "SELECT source, reason, payload FROM dead_letter ORDER BY received_at")
    assert [r[0] for r in letters] == ["binance:BTCUSDT", "binance:BTCUSDT"]
    assert letters[0][1].startswith("websocket close 1007:")
    assert "\\xff\\xfe" in letters[0][2]  # the first bytes, escaped
    assert letters[1][1].startswith("websocket close 1009: message")
    assert letters[1][2].startswith('{"stream":"btcusdt@trade","data":"xxx')
    assert len(letters[1][2]) == 256
