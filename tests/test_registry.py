"""Every registered provider keeps the contract the generic code relies on.

A new provider gets these checks for free by its registry line.
"""

from __future__ import annotations

import pytest

from mdagent.providers.registry import PROVIDERS, provider_for, provider_names
from mdagent.testing.kit import kit_for
from mdagent.testing.venue import FakeVenue


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_description_is_registered_under_its_own_name(name: str) -> None:
    provider = provider_for(name)
    assert provider.name == name
    assert provider.ws_url.startswith(("ws://", "wss://"))
    assert provider.rest_url.startswith(("http://", "https://"))
    assert provider.channels, "a provider offers at least one channel"
    for channel_name, channel in provider.channels.items():
        assert channel.name == channel_name
        assert channel.kind in ("trades", "quotes", "candles")
        assert provider.sequence_rule(channel_name) is channel.sequence


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_testing_kit_fits_the_description(name: str) -> None:
    provider = provider_for(name)
    kit = kit_for(name)
    assert issubclass(kit.venue, FakeVenue)
    bench = kit.bench
    assert bench.provider == name
    assert set(bench.channels) <= set(provider.channels)
    names = bench.symbol_names(25)
    assert len(set(names)) == 25
    assert [provider.symbols.problem(s) for s in names] == [None] * len(names)
    assert bench.connections(25) >= 1


def test_unknown_provider_is_one_error_everywhere() -> None:
    with pytest.raises(ValueError, match="unknown provider 'nope'"):
        provider_for("nope")
    with pytest.raises(ValueError, match="unknown provider 'nope'"):
        kit_for("nope")
    assert provider_names() == list(PROVIDERS)
