"""mdagent: a market data recorder that loses nothing silently and stores nothing twice."""

__version__ = "0.1.0"
