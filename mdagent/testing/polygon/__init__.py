"""The fake Polygon/Massive stocks venue (WebSocket + REST) and its seeded market generator."""
