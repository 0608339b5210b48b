"""The fake Binance Spot venue (WebSocket + REST) and its seeded market generator."""
