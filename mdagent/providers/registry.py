"""Every provider by name: the one place the generic code meets provider names.

Adding a provider is one folder under ``mdagent/providers/`` and one line
here (README, "Adding a provider"). Lookups go through :func:`provider_for`
so an unknown name fails the same way everywhere.
"""

from __future__ import annotations

from mdagent.providers.base import Provider
from mdagent.providers.binance.provider import BINANCE
from mdagent.providers.polygon.provider import POLYGON

PROVIDERS: dict[str, Provider] = {
    BINANCE.name: BINANCE,
    POLYGON.name: POLYGON,
}


def provider_for(name: str) -> Provider:
    """The description of provider ``name``; ValueError if none is registered."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}") from None


def provider_names() -> list[str]:
    """Registered names in registry order (CLI choices, config messages)."""
    return list(PROVIDERS)
