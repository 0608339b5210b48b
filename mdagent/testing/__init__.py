"""Test doubles for mdagent: loopback fake venues and the small servers they are built on.

- :mod:`mdagent.testing.httpserver`: a minimal HTTP/1.1 server (trio + h11).
- :mod:`mdagent.testing.wsserver`: a minimal WebSocket server (trio + wsproto).
- :mod:`mdagent.testing.binance.marketgen`: deterministic, seeded market data.
- :mod:`mdagent.testing.binance.venue`: a fake Binance spot venue (WebSocket + REST)
  with fault injection and a record of what it actually sent (ground truth).

Nothing here is imported by the agent itself; it backs the tests,
``mdagent fake-venue`` and ``mdagent bench``.
"""
