"""wss:// to a venue whose certificate is not in the system's trust store.

A real TLS terminator (trio's SSL server, a self-signed certificate made by
``openssl``) forwards bytes to the fake Binance venue, as a private CA or a
TLS-intercepting proxy would.
"""

from __future__ import annotations

import ssl
import subprocess
from functools import partial
from pathlib import Path

import pytest
import trio

from mdagent.errors import StreamError
from mdagent.providers.binance.io import BinanceAdapter
from mdagent.testing.binance.venue import FakeBinance
from tests.agent_support import binance_source


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def _pipe(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _forward(backend_port: int, tls: trio.SSLStream[trio.SocketStream]) -> None:
    try:
        plain = await trio.open_tcp_stream("127.0.0.1", backend_port)
        async with plain, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, tls, plain)
            await _pipe(plain, tls)
            nursery.cancel_scope.cancel()
    except trio.BrokenResourceError:
        pass  # the client gave up on the handshake


async def test_certificate_error_text_and_ca_file(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    venue = FakeBinance(symbols=["BTCUSDT"], seed=3, events_per_s=200)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            ws_url, _ = await nursery.start(venue.serve)
            backend_port = int(ws_url.rsplit(":", 1)[1])
            listeners = await nursery.start(
                partial(
                    trio.serve_ssl_over_tcp,
                    partial(_forward, backend_port),
                    0,
                    server_ctx,
                    host="127.0.0.1",
                )
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            wss = f"wss://localhost:{port}"
            adapter = BinanceAdapter()

            untrusted = binance_source(wss, ["BTCUSDT"], ["trade"])
            with pytest.raises(StreamError) as info:
                async with adapter.connect(untrusted):
                    pass
            message = str(info.value)
            assert "certificate verify failed" in message, message
            assert "self-signed certificate" in message, message

            trusted = binance_source(wss, ["BTCUSDT"], ["trade"], ca_file=str(cert))
            async with adapter.connect(trusted) as conn:
                frames = await conn.receive_batch()
            assert frames and b'"e":"trade"' in (
                frames[0].encode() if isinstance(frames[0], str) else frames[0]
            )
            nursery.cancel_scope.cancel()
