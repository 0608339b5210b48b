"""The fake Polygon/Massive stocks venue (WebSocket + REST), its seeded market and its bench profile."""

from mdagent.testing.kit import TestingKit
from mdagent.testing.polygon.bench import PolygonBench
from mdagent.testing.polygon.venue import FakePolygon

KIT = TestingKit(venue=FakePolygon, bench=PolygonBench())
