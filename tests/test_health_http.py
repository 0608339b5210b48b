"""/healthz, /readyz and /metrics over a real socket."""

from __future__ import annotations

import httpx
import trio

from mdagent.pipeline.health import Health
from mdagent.pipeline.http import HealthServer
from mdagent.pipeline.metrics import Metrics


async def get(port: int, path: str) -> httpx.Response:
    def fetch() -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)

    return await trio.to_thread.run_sync(fetch)


async def test_endpoints_follow_health() -> None:
    health = Health()
    metrics = Metrics()
    server = HealthServer(health, metrics)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            assert (await get(port, "/healthz")).status_code == 200

            health.stream("binance:BTCUSDT")
            not_ready = await get(port, "/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["problems"] == [
                "database not writable",
                "binance:BTCUSDT: not connected",
            ]

            health.database_ok = True
            health.stream("binance:BTCUSDT").connected = True
            ready = await get(port, "/readyz")
            assert ready.status_code == 200 and ready.json() == {
                "ready": True,
                "problems": [],
                "streams": [],
            }

            metrics.frames_received.labels("binance:BTCUSDT").inc(3)
            body = (await get(port, "/metrics")).text
            assert 'mdagent_frames_received_total{source="binance:BTCUSDT"} 3.0' in body
            assert "mdagent_ready 1.0" in body

            assert (await get(port, "/nope")).status_code == 404
            nursery.cancel_scope.cancel()
