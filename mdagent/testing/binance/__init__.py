"""The fake Binance Spot venue (WebSocket + REST), its seeded market and its bench profile."""

from mdagent.testing.binance.bench import BinanceBench
from mdagent.testing.binance.venue import FakeBinance
from mdagent.testing.kit import TestingKit

KIT = TestingKit(venue=FakeBinance, bench=BinanceBench())
