"""providers/wsclient.py splits server frames itself: every frame shape, over a real socket.

A scripted server (real loopback TCP, wsproto only to accept the upgrade and
to read what the client sends back) writes raw frame bytes in chosen chunks:
length encodings at their edges (125/126, 65535/65536), frames split across
reads at every byte, fragmented messages with a ping between fragments,
close frames, masked frames, refusals (1007, 1009) and frames that come in
the same write as the 101 response.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import attrs
import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Pong, Request

from mdagent.providers.wsclient import (
    FrameRefusedByUs,
    WebSocketClient,
    WebSocketClosed,
    connect_websocket,
)

TEXT, BINARY, CONTINUATION, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"") -> bytes:
    """One frame as a server (or, with ``mask``, a client) writes it."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        header = bytes((first, bit | n))
    elif n < 65536:
        header = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + payload


def text(s: str) -> bytes:
    return frame(TEXT, s.encode())


@attrs.define
class Script:
    """What the server writes: ``with_upgrade`` in the 101's write, then ``chunks``."""

    chunks: Sequence[bytes]
    with_upgrade: bytes = b""
    # Events the server read from the client after writing the chunks.
    received: list[Event] = attrs.Factory(list)
    done: trio.Event = attrs.Factory(trio.Event)


async def serve(script: Script, stream: trio.SocketStream) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        ws.receive_data(await stream.receive_some(65536))
        if any(isinstance(e, Request) for e in ws.events()):
            break
    await stream.send_all(ws.send(AcceptConnection()) + script.with_upgrade)
    for chunk in script.chunks:
        await stream.send_all(chunk)
        # The client reads each chunk before the next is sent: separate reads.
        await trio.testing.wait_all_tasks_blocked()
    # Until the client closes (each test bounds its own wait on ``done``).
    with trio.move_on_after(60):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                script.received.append(event)
                if isinstance(event, CloseConnection) and not script.done.is_set():
                    script.done.set()
    script.done.set()


Connect = Callable[..., Awaitable[WebSocketClient]]


@pytest.fixture
async def client_for(nursery: trio.Nursery) -> AsyncIterator[Connect]:
    clients: list[WebSocketClient] = []

    async def connect(script: Script, max_message_bytes: int = 1 << 20) -> WebSocketClient:
        listeners = await nursery.start(trio.serve_tcp, lambda s: serve(script, s), 0)
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            client = await connect_websocket(
                f"ws://127.0.0.1:{port}/", max_message_bytes=max_message_bytes
            )
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.aclose()


async def read_all(client: WebSocketClient, count: int) -> list[str | bytes]:
    got: list[str | bytes] = []
    with trio.fail_after(10):
        while len(got) < count:
            got += await client.receive_batch()
    return got


EDGE_SIZES = (0, 1, 125, 126, 127, 65535, 65536, 70000)


async def test_length_encodings_at_their_edges_in_one_write(client_for: Connect) -> None:
    payloads = ["x" * n for n in EDGE_SIZES]
    client = await client_for(Script([b"".join(text(p) for p in payloads)]))
    assert await read_all(client, len(payloads)) == payloads


async def test_frames_split_across_reads_at_every_byte(client_for: Connect) -> None:
    payloads = ["a" * 125, "b" * 126, "é" * 40, "c" * 300, ""]
    blob = b"".join(text(p) for p in payloads) + frame(BINARY, b"\x00\xff" * 70)
    chunks = [blob[i : i + 1] for i in range(len(blob))]
    client = await client_for(Script(chunks))
    assert await read_all(client, 6) == [*payloads, b"\x00\xff" * 70]


async def test_random_chunking_of_large_frames(client_for: Connect) -> None:
    payloads = [os.urandom(n).hex() for n in (5, 70_000, 126, 40_000, 1)]
    blob = b"".join(text(p) for p in payloads)
    cuts = sorted({0, len(blob), *(int.from_bytes(os.urandom(3)) % len(blob) for _ in range(40))})
    client = await client_for(Script([blob[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]))
    assert await read_all(client, len(payloads)) == payloads


async def test_frames_in_the_same_write_as_the_101_response(client_for: Connect) -> None:
    first = text("one") + text("two")[:3]  # the second frame ends in the next write
    client = await client_for(Script([text("two")[3:] + text("three")], with_upgrade=first))
    assert await read_all(client, 3) == ["one", "two", "three"]


async def test_fragmented_message_with_a_ping_between_fragments(client_for: Connect) -> None:
    script = Script(
        [
            text("before"),
            frame(TEXT, b"frag-", fin=False),
            frame(PING, b"are you there"),
            frame(CONTINUATION, "mid-é".encode(), fin=False),
            frame(CONTINUATION, b"end"),
            text("after"),
            frame(CLOSE, (1000).to_bytes(2, "big") + b"bye"),
        ]
    )
    client = await client_for(script)
    assert await read_all(client, 3) == ["before", "frag-mid-éend", "after"]
    with trio.fail_after(10), pytest.raises(WebSocketClosed) as closed:
        await client.receive_batch()
    assert (closed.value.code, closed.value.reason) == (1000, "bye")
    with trio.fail_after(10):
        await script.done.wait()
    pongs = [e for e in script.received if isinstance(e, Pong)]
    assert [bytes(p.payload) for p in pongs] == [b"are you there"]
    assert any(isinstance(e, CloseConnection) and e.code == 1000 for e in script.received)


async def test_fragmented_binary_split_byte_by_byte(client_for: Connect) -> None:
    blob = (
        frame(BINARY, b"\x01" * 130, fin=False)
        + frame(PING, b"p")
        + frame(CONTINUATION, b"\x02" * 3)
        + text("next")
    )
    client = await client_for(Script([blob[i : i + 1] for i in range(len(blob))]))
    assert await read_all(client, 2) == [b"\x01" * 130 + b"\x02" * 3, "next"]


async def test_close_frame_ends_the_batch_after_earlier_messages(client_for: Connect) -> None:
    script = Script([text("a") + text("b") + frame(CLOSE, (4001).to_bytes(2, "big") + b"go")])
    client = await client_for(script)
    assert await read_all(client, 2) == ["a", "b"]
    with trio.fail_after(10), pytest.raises(WebSocketClosed) as closed:
        await client.receive_batch()
    assert closed.value.code == 4001


async def test_invalid_utf8_in_a_text_frame_is_refused_with_1007(client_for: Connect) -> None:
    script = Script([text("ok") + frame(TEXT, b'{"s":"\xff\xfe"}') + text("never")])
    client = await client_for(script)
    assert await read_all(client, 1) == ["ok"]
    with trio.fail_after(10), pytest.raises(FrameRefusedByUs) as refused:
        await client.receive_batch()
    assert refused.value.code == 1007
    assert refused.value.head == b'{"s":"\xff\xfe"}'
    with trio.fail_after(10):
        await script.done.wait()
    assert any(isinstance(e, CloseConnection) and e.code == 1007 for e in script.received)


async def test_answers_to_frames_in_the_upgrade_read_are_sent(client_for: Connect) -> None:
    """A ping and a refused frame that came in the 101's own read are answered
    at once (a loaded client reads the 101 and what follows it together); the
    answers once waited for a next read, or were never sent when the refusal
    ended the connection."""
    pinged = Script([], with_upgrade=text("ok") + frame(PING, b"hi"))
    client = await client_for(pinged)
    assert await read_all(client, 1) == ["ok"]
    with trio.fail_after(10):
        while not any(isinstance(e, Pong) for e in pinged.received):
            await trio.sleep(0.01)
    assert [bytes(e.payload) for e in pinged.received if isinstance(e, Pong)] == [b"hi"]

    refused = Script([], with_upgrade=text("ok") + frame(TEXT, b"\xff"))
    client = await client_for(refused)
    assert await read_all(client, 1) == ["ok"]
    with trio.fail_after(10), pytest.raises(FrameRefusedByUs) as closed:
        await client.receive_batch()
    assert closed.value.code == 1007
    with trio.fail_after(10):
        await refused.done.wait()
    assert any(isinstance(e, CloseConnection) and e.code == 1007 for e in refused.received)


async def test_invalid_utf8_inside_a_fragmented_message_is_refused_with_1007(
    client_for: Connect,
) -> None:
    script = Script([frame(TEXT, b"ok-", fin=False) + frame(CONTINUATION, b"\xff")])
    client = await client_for(script)
    with trio.fail_after(10), pytest.raises(FrameRefusedByUs) as refused:
        await client.receive_batch()
    assert refused.value.code == 1007


async def test_oversized_frame_is_refused_from_its_header(client_for: Connect) -> None:
    # Only the header and 300 bytes of a 5 MB frame are ever sent: the refusal
    # must not wait for (or buffer) the rest.
    header = bytes((0x81, 127)) + (5 << 20).to_bytes(8, "big")
    script = Script([text("ok") + header + b"y" * 300])
    client = await client_for(script, max_message_bytes=1 << 20)
    assert await read_all(client, 1) == ["ok"]
    with trio.fail_after(10), pytest.raises(FrameRefusedByUs) as refused:
        await client.receive_batch()
    assert refused.value.code == 1009
    assert refused.value.head == b"y" * 256


@pytest.mark.parametrize("limit", [100, 1000])
async def test_a_text_frame_of_exactly_the_limit_is_taken_one_byte_more_is_refused(
    client_for: Connect, limit: int
) -> None:
    # Both header forms (7-bit and 16-bit length) at the limit's edge.
    script = Script([text("a" * limit) + text("b" * (limit + 1))])
    client = await client_for(script, max_message_bytes=limit)
    assert await read_all(client, 1) == ["a" * limit]
    with trio.fail_after(10), pytest.raises(FrameRefusedByUs) as refused:
        await client.receive_batch()
    assert refused.value.code == 1009
    assert refused.value.head == b"b" * min(limit + 1, 256)


async def test_oversized_fragmented_message_is_refused(client_for: Connect) -> None:
    script = Script([frame(TEXT, b"z" * 600, fin=False) + frame(CONTINUATION, b"z" * 600)])
    client = await client_for(script, max_message_bytes=1000)
    with trio.fail_after(10), pytest.raises(FrameRefusedByUs) as refused:
        await client.receive_batch()
    assert refused.value.code == 1009
    assert refused.value.head.startswith(b"zzz")


async def test_masked_server_frame_is_a_protocol_error(client_for: Connect) -> None:
    script = Script([text("ok") + frame(TEXT, b"masked", mask=b"\x01\x02\x03\x04")])
    client = await client_for(script)
    assert await read_all(client, 1) == ["ok"]
    with trio.fail_after(10), pytest.raises(WebSocketClosed) as closed:
        await client.receive_batch()
    assert closed.value.code == 1002


async def test_control_frame_claiming_a_huge_length_is_refused(client_for: Connect) -> None:
    header = bytes((0x89, 127)) + (1 << 40).to_bytes(8, "big")  # a "ping" of 1 TB
    client = await client_for(Script([header]))
    with trio.fail_after(10), pytest.raises(WebSocketClosed) as closed:
        await client.receive_batch()
    assert closed.value.code in (1002, 1009)


async def test_continuation_without_a_start_is_a_protocol_error(client_for: Connect) -> None:
    client = await client_for(Script([frame(CONTINUATION, b"orphan")]))
    with trio.fail_after(10), pytest.raises(WebSocketClosed) as closed:
        await client.receive_batch()
    assert closed.value.code == 1002
