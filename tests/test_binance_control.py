"""Binance control messages (sans-IO): ids, replies matched by id, the 5 messages/s budget."""

from __future__ import annotations

import orjson
import pytest

from mdagent.providers.binance.control import CONTROL_MESSAGES_PER_S, ControlChannel, ControlPacer


def test_requests_count_ids_and_carry_params() -> None:
    control = ControlChannel()
    first, text = control.request("SUBSCRIBE", ["btcusdt@trade", "ethusdt@bookTicker"])
    second, listing = control.request("LIST_SUBSCRIPTIONS")
    assert (first, second) == (1, 2)
    assert orjson.loads(text) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@trade", "ethusdt@bookTicker"],
        "id": 1,
    }
    assert orjson.loads(listing) == {"method": "LIST_SUBSCRIPTIONS", "id": 2}
    assert control.pending() == 2


def test_only_replies_to_our_pending_ids_are_taken() -> None:
    control = ControlChannel()
    req_id, _ = control.request("UNSUBSCRIBE", ["btcusdt@trade"])
    data = '{"stream":"btcusdt@trade","data":{"e":"trade","t":1}}'
    assert not control.take_reply(data)
    assert not control.take_reply('{"result":null,"id":99}')  # not ours
    assert not control.take_reply('{"e":"serverShutdown","E":1}')
    assert not control.take_reply(b"not json")
    assert control.reply(req_id) is None
    assert control.take_reply(b'{"result":null,"id":1}')
    reply = control.reply(req_id)
    assert reply is not None and reply.error == "" and reply.result is None
    assert control.pending() == 0
    # Taken once: a repeat of the same reply is no longer ours.
    assert not control.take_reply('{"result":null,"id":1}')


@pytest.mark.parametrize(
    "frame",
    [
        '{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":1}',  # live servers
        '{"code":2,"msg":"Invalid request: invalid stream","id":1}',  # the docs' flat form
    ],
)
def test_error_replies_in_both_shapes(frame: str) -> None:
    control = ControlChannel()
    control.request("SUBSCRIBE", ["x@trade"])
    assert control.take_reply(frame)
    reply = control.reply(1)
    assert reply is not None
    assert reply.error == "code 2: Invalid request: invalid stream"


def test_list_subscriptions_result_is_kept() -> None:
    control = ControlChannel()
    control.request("LIST_SUBSCRIPTIONS")
    assert control.take_reply('{"result":["btcusdt@trade"],"id":1}')
    reply = control.reply(1)
    assert reply is not None and reply.result == ["btcusdt@trade"]


def test_pacer_keeps_to_three_messages_in_any_rolling_second() -> None:
    pacer = ControlPacer()
    assert CONTROL_MESSAGES_PER_S == 3
    for at in (10.0, 10.1, 10.2):
        assert pacer.wait_s(at) == 0.0
        pacer.sent(at)
    assert pacer.wait_s(10.3) == pytest.approx(0.7)  # the first leaves the window at 11.0
    assert pacer.wait_s(11.0) == 0.0  # one second after the first
    pacer.sent(11.0)
    assert pacer.wait_s(11.05) == pytest.approx(0.05)  # 10.1 leaves at 11.1
    assert pacer.wait_s(13.0) == 0.0
    with pytest.raises(ValueError):
        ControlPacer(0)
