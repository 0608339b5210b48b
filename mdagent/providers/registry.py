"""Provider adapters by name: the only place the generic code meets provider names."""

from __future__ import annotations

from mdagent.providers.base import ProviderAdapter


def adapter_for(provider: str) -> ProviderAdapter:
    if provider == "binance":
        from mdagent.providers.binance.io import BinanceAdapter

        return BinanceAdapter()
    if provider == "polygon":
        from mdagent.providers.polygon.io import PolygonAdapter

        return PolygonAdapter()
    raise ValueError(f"unknown provider {provider!r}")
