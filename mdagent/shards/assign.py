"""Which worker process owns which streams: a stable hash, the same in every process.

With ``[agent] workers = N`` (N > 1) each stream (provider, symbol, channel)
is written by exactly one worker, so its commits stay in order and its
offset (``stream_offsets``) and gap detection have one owner:

- a source of a provider that allows several connections (Binance) is split
  by symbol: symbol ``s`` of provider ``p`` belongs to worker
  ``H(p + "\\0" + s) % N``, ``s`` spelled as the records spell it
  (Binance upper case), so a symbol lands on the same worker whichever
  source names it, and each worker opens its own connection(s) for its share;
- a source of a provider that allows one simultaneous connection per account
  (``Provider.single_connection``: Polygon, wire-formats.md 2.4) stays whole
  on worker ``H(p + "\\0key\\0" + api_key_env) % N`` (the source's key
  when it names no variable): sources sharing a key share a worker.

``H`` is the first 8 bytes of BLAKE2b of the UTF-8 text, read big-endian:
not Python's ``hash()``, which is salted per process, nor CRC-32, whose low
bits split similar names (``S0USDT``...``S19USDT``) 16 to 4 over 2 workers. The assignment depends only on N and the names, so a restarted
worker, a reload and the next start all give a stream the same owner.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from mdagent.providers.registry import provider_for

if TYPE_CHECKING:
    from mdagent.config import SourceConfig

__all__ = ["Shard", "ownership_problems", "shard_of_source", "shard_of_symbol", "shard_sources"]


@attrs.frozen
class Shard:
    """Worker ``index`` (0-based) of ``count`` worker processes."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _bucket(text: str, count: int) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_of_symbol(provider: str, symbol: str, count: int) -> int:
    """The worker (0 to ``count - 1``) owning ``provider``'s ``symbol`` (as configured)."""
    return _bucket(f"{provider}\0{provider_for(provider).symbols.same_as(symbol)}", count)


def shard_of_source(source: SourceConfig, count: int) -> int:
    """The worker owning a whole source of a single-connection provider."""
    return _bucket(f"{source.provider}\0key\0{source.api_key_env or source.key}", count)


def shard_sources(sources: Sequence[SourceConfig], shard: Shard) -> tuple[SourceConfig, ...]:
    """The sources worker ``shard`` runs: its symbols of each split source, its whole sources.

    A source keeps its name (so its ``source`` label and logs read the same
    in every worker); one with no symbol of this worker is left out.
    """
    if shard.count == 1:
        return tuple(sources)
    mine = []
    for source in sources:
        if provider_for(source.provider).single_connection:
            if shard_of_source(source, shard.count) == shard.index:
                mine.append(source)
            continue
        symbols = tuple(
            s
            for s in source.symbols
            if shard_of_symbol(source.provider, s, shard.count) == shard.index
        )
        if symbols:
            mine.append(attrs.evolve(source, symbols=symbols))
    return tuple(mine)


def ownership_problems(sources: Sequence[SourceConfig], count: int) -> list[str]:
    """Config problems: a stream two workers would write (whole sources on different workers).

    Only single-connection sources can collide: a symbol (or the ``*``
    wildcard, which brings every symbol) in two such sources of one provider
    placed on different workers. Split sources never do (one owner per symbol).
    """
    if count == 1:
        return []
    owners: dict[tuple[str, str], set[int]] = defaultdict(set)
    for source in sources:
        provider = provider_for(source.provider)
        if not provider.single_connection:
            continue
        worker = shard_of_source(source, count)
        for symbol in source.symbols:
            owners[(source.provider, provider.symbols.same_as(symbol))].add(worker)
    problems = []
    for (provider_name, symbol), workers in sorted(owners.items()):
        wildcard = owners.get((provider_name, "*"), set())
        both = workers | wildcard
        if len(both) > 1:
            problems.append(
                f"sources: {provider_name} symbol {symbol!r} would be written by worker processes"
                f" {', '.join(map(str, sorted(both)))} ({provider_name} sources stay whole on the"
                " worker their api_key_env picks); with [agent] workers > 1 give such sources"
                " one key or disjoint symbols"
            )
    return problems
