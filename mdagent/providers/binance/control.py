"""Binance control messages on a live connection: SUBSCRIBE / UNSUBSCRIBE with replies by id.

Sans-IO (wire-formats.md 1.2, 1.3). A request is ``{"method":..,"params":[..],"id":N}``;
its reply is ``{"result":null,"id":N}``, or an error, flat ``{"code":2,"msg":..,"id":N}``
or wrapped ``{"error":{"code":..,"msg":..},"id":N}`` (1.9). Replies arrive on the
same socket as the data frames, so the reader hands every frame that is not a
combined-stream envelope to :meth:`ControlChannel.take_reply`.

The venue disconnects a client sending more than 5 messages per second, and
pings, pongs and control messages all count (1.3). :class:`ControlPacer` keeps
control messages to ``CONTROL_MESSAGES_PER_S`` (3) in any rolling second,
leaving room for the pongs the WebSocket layer sends on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import msgspec

from mdagent.providers.binance.sansio import (
    list_subscriptions_message,
    subscribe_message,
    unsubscribe_message,
)

__all__ = ["CONTROL_MESSAGES_PER_S", "ControlChannel", "ControlPacer", "Method", "Reply"]

CONTROL_MESSAGES_PER_S: Final = 3

_DECODER = msgspec.json.Decoder()

Method = Literal["SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS"]
_BUILDERS: dict[str, Callable[[Sequence[str], int], str]] = {
    "SUBSCRIBE": subscribe_message,
    "UNSUBSCRIBE": unsubscribe_message,
    "LIST_SUBSCRIPTIONS": lambda _params, req_id: list_subscriptions_message(req_id),
}


class Reply(msgspec.Struct, frozen=True):
    """The venue's answer to one request: ``error`` is empty when it succeeded."""

    id: int
    result: Any = None
    error: str = ""


class ControlChannel:
    """Request ids and the replies matched to them, for one connection.

    Ids are positive integers counting from 1 per connection (any signed
    64-bit value is valid, 1.2). Only replies to requests made here are taken;
    anything else (data, serverShutdown, an unsolicited error) is left to the
    parser.
    """

    def __init__(self) -> None:
        self._next_id = 1
        self._pending: set[int] = set()
        self._replies: dict[int, Reply] = {}

    def request(self, method: Method, params: Sequence[str] = ()) -> tuple[int, str]:
        """(id, the JSON text to send) for ``method`` with ``params`` (streams)."""
        req_id = self._next_id
        self._next_id += 1
        self._pending.add(req_id)
        return req_id, _BUILDERS[method](params, req_id)

    def take_reply(self, frame: str | bytes) -> bool:
        """True when ``frame`` answers a pending request (then kept for :meth:`reply`)."""
        # Data frames are combined-stream envelopes: skip them without decoding.
        if (
            frame.startswith('{"stream"')
            if isinstance(frame, str)
            else frame.startswith(b'{"stream"')
        ):
            return False
        try:
            value = _DECODER.decode(frame)
        except msgspec.DecodeError:
            return False
        if not isinstance(value, dict):
            return False
        req_id = value.get("id")
        if not isinstance(req_id, int) or req_id not in self._pending:
            return False
        self._pending.discard(req_id)
        error = value.get("error")
        if isinstance(error, dict):
            text = f"code {error.get('code')}: {error.get('msg')}"
        elif "code" in value and "result" not in value:
            text = f"code {value.get('code')}: {value.get('msg')}"
        else:
            text = ""
        self._replies[req_id] = Reply(req_id, value.get("result"), text)
        return True

    def reply(self, req_id: int) -> Reply | None:
        """The reply to ``req_id`` once it arrived (removed on read), else None."""
        return self._replies.pop(req_id, None)

    def pending(self) -> int:
        """How many requests still wait for their reply."""
        return len(self._pending)


class ControlPacer:
    """At most ``per_second`` messages in any rolling second (times in seconds, any clock)."""

    def __init__(self, per_second: int = CONTROL_MESSAGES_PER_S) -> None:
        if per_second < 1:
            raise ValueError("per_second must be >= 1")
        self._per_second = per_second
        self._sent: deque[float] = deque()

    def wait_s(self, now: float) -> float:
        """How long to wait from ``now`` before the next message may go (0.0: now)."""
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()
        if len(self._sent) < self._per_second:
            return 0.0
        return self._sent[0] + 1.0 - now

    def sent(self, now: float) -> None:
        """Record a message sent at ``now``."""
        self._sent.append(now)
