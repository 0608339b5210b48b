"""Polygon/Massive stocks channel names (wire-formats.md 2.3): plain data, no imports."""

from __future__ import annotations

POLYGON_CHANNELS = ("T", "Q", "AM", "A")
