"""The shared base of the fake venues: one API, whichever provider a test drives.

Every provider's fake (``mdagent/testing/<provider>/venue.py``) subclasses
:class:`FakeVenue`, so a test written against one reads the same against the
next:

- **construction**: keyword-only ``symbols``, ``seed``, ``events_per_s``
  (a pace per connection: of its own frames for Binance, through the shared
  market tape for Polygon; 0 = as fast as the client reads), ``faults``,
  ``max_history``; provider-specific options follow;
- **URLs**: :attr:`FakeVenue.ws_url` and :attr:`FakeVenue.rest_url`,
  properties that exist once :meth:`FakeVenue.serve` has started (the same
  pair it hands to ``task_status.started``);
- **ground truth**: :attr:`FakeVenue.truth`, what was actually written to a
  socket (and what was generated but skipped), and :meth:`FakeVenue.market`,
  the generated market and REST history of one symbol;
- **fault switches**: :attr:`FakeVenue.faults` (a frozen :class:`VenueFaults`
  subclass) and :meth:`FakeVenue.set_faults`, read on every frame;
  :meth:`FakeVenue.stall` pauses data on every connection;
- **counters**: :attr:`FakeVenue.counters` (``Counter[str]``: ``connections``,
  ``frames_sent``, ``rest_requests``, ``rest_429s``, and each venue's own)
  and :meth:`FakeVenue.stats`, a JSON-able snapshot;
- **serving**: :meth:`FakeVenue.serve` in a nursery, or
  :meth:`FakeVenue.serve_forever` owning a process (``mdagent fake-venue``),
  where what lived a second is frozen out of the cyclic GC
  (:func:`freeze_survivors`): a venue must not pause while holding events
  it has stamped.
"""

from __future__ import annotations

import abc
import argparse
import gc
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar

import attrs
import trio

from mdagent.testing.httpserver import HttpRequest, HttpResponse, serve_http
from mdagent.testing.validators import non_negative, positive_or_none
from mdagent.testing.wsserver import IncomingWebSocket, serve_websocket


@attrs.frozen
class VenueFaults:
    """Faults every fake venue injects (``None`` / 0 disables).

    Frame counts are per connection, 1-based, and count data frames only
    (not control replies, statuses or duplicates): ``malformed_every_frames=10``
    affects frames 10, 20, ... Each venue's subclass documents what a
    malformed frame or a disconnect looks like on its wire.
    """

    disconnect_every_frames: int | None = attrs.field(default=None, validator=positive_or_none)
    """Drop the connection right after every N-th data frame."""
    duplicate_every_frames: int | None = attrs.field(default=None, validator=positive_or_none)
    """Send every N-th data frame twice."""
    malformed_every_frames: int | None = attrs.field(default=None, validator=positive_or_none)
    """Every N-th data frame is corrupted (the venue's own kinds, in turn)."""
    stall_after_frames: int | None = attrs.field(default=None, validator=positive_or_none)
    stall_s: float = attrs.field(default=0.0, validator=non_negative)
    """After the N-th data frame send no data for ``stall_s`` (the socket stays up)."""
    rest_force_429: int = attrs.field(default=0, validator=non_negative)
    """Answer the next K REST requests with 429 (re-armed by ``set_faults``)."""
    rest_retry_after_s: int = attrs.field(default=1, validator=non_negative)
    """The ``Retry-After`` header of a forced 429, in seconds."""
    delisted: tuple[str, ...] = ()
    """Symbols the venue's instrument list shows as not trading (each venue's
    own word: Binance status ``BREAK``, Polygon ``active: false``); they still stream."""


F = TypeVar("F", bound=VenueFaults)
V = TypeVar("V", bound="FakeVenue[Any]")


class FakeVenue(abc.ABC, Generic[F]):
    """A loopback fake of one provider: WebSocket + REST, faults, ground truth.

    Subclasses implement the two handlers, :attr:`truth`, :meth:`market` and
    :meth:`stats`; everything else here is shared. See the module docstring
    for the API every venue offers.
    """

    # The path of the streaming endpoint under ``ws://host:port`` (a Polygon
    # cluster such as ``/stocks``); empty when clients add their own path.
    ws_path: ClassVar[str] = ""
    # The largest client message the WebSocket server accepts (None: its default).
    ws_max_message_bytes: ClassVar[int | None] = None
    # Ground truth: what was written to sockets (and what was generated but
    # skipped); each venue sets its own record type in __init__.
    truth: Any

    def __init__(
        self, *, symbols: Sequence[str], seed: int, events_per_s: float, faults: F
    ) -> None:
        if events_per_s < 0:
            raise ValueError("events_per_s must be >= 0")
        self.symbols: tuple[str, ...] = tuple(s.upper() for s in symbols)
        self.seed = seed
        self.events_per_s = events_per_s
        self.counters: Counter[str] = Counter()
        self._stall_until = -math.inf
        # Data writes under way: a write is recorded as sent once it completes.
        self.writes_in_flight = 0
        self._force_429_left = 0
        self._ws_url: str | None = None
        self._rest_url: str | None = None
        self.faults = faults
        self.set_faults(faults)

    # -- URLs ------------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """``ws://host:port`` plus :attr:`ws_path`, once serving (RuntimeError before)."""
        if self._ws_url is None:
            raise RuntimeError("the venue is not serving yet")
        return self._ws_url

    @property
    def rest_url(self) -> str:
        """``http://host:port``, once serving (RuntimeError before)."""
        if self._rest_url is None:
            raise RuntimeError("the venue is not serving yet")
        return self._rest_url

    # -- ground truth ----------------------------------------------------------------------

    @abc.abstractmethod
    def market(self, symbol: str) -> Any:
        """The generated market and REST history of ``symbol``."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot: counters, open connections, faults."""

    # -- fault switches --------------------------------------------------------------------

    def set_faults(self, faults: F | None = None, **changes: Any) -> F:
        """Replace the faults, or change some fields of the current ones.

        Takes effect on the next frame and re-arms the one-shot faults
        (``rest_force_429`` and each venue's own). Returns the faults now set.
        """
        new = faults if faults is not None else self.faults
        if changes:
            new = attrs.evolve(new, **changes)
        self.faults = new
        self._force_429_left = new.rest_force_429
        self._faults_armed(new)
        return new

    def _faults_armed(self, faults: F) -> None:
        """Hook: re-arm a venue's own one-shot faults after :meth:`set_faults`."""

    def stall(self, seconds: float) -> None:
        """Stop data on every connection for ``seconds`` (sockets stay up).

        A write already under way completes (and is recorded) after this
        returns: wait for :meth:`settled` before reading the ground truth as
        final.
        """
        self._stall_until = max(self._stall_until, trio.current_time() + seconds)

    def stalled(self) -> bool:
        """True while a :meth:`stall` holds: no data write starts."""
        return trio.current_time() < self._stall_until

    def settled(self) -> bool:
        """Stalled and no data write under way: what was sent is final until the stall ends."""
        return self.stalled() and self.writes_in_flight == 0

    def _take_forced_429(self) -> bool:
        """True (and one fewer left) while ``rest_force_429`` requests remain."""
        if self._force_429_left > 0:
            self._force_429_left -= 1
            return True
        return False

    # -- serving ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def _handle_ws(self, incoming: IncomingWebSocket) -> None:
        """Accept or reject one WebSocket handshake and run the session."""

    @abc.abstractmethod
    async def _handle_http(self, request: HttpRequest) -> HttpResponse:
        """Answer one REST request."""

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        ws_port: int = 0,
        rest_port: int = 0,
        task_status: trio.TaskStatus[tuple[str, str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve WebSocket and REST until cancelled; ``task_status.started((ws_url, rest_url))``.

        Port 0 picks a free port; the URLs name the bound ones.
        """
        ws_options: dict[str, Any] = {}
        if self.ws_max_message_bytes is not None:
            ws_options["max_message_bytes"] = self.ws_max_message_bytes
        async with trio.open_nursery() as nursery:
            bound_ws = await nursery.start(
                partial(serve_websocket, self._handle_ws, host=host, port=ws_port, **ws_options)
            )
            bound_rest = await nursery.start(
                partial(serve_http, self._handle_http, host=host, port=rest_port)
            )
            shown = f"[{host}]" if ":" in host else host
            self._ws_url = f"ws://{shown}:{bound_ws}{self.ws_path}"
            self._rest_url = f"http://{shown}:{bound_rest}"
            task_status.started((self._ws_url, self._rest_url))

    @classmethod
    def options_from_cli(cls, args: argparse.Namespace) -> dict[str, Any]:
        """``mdagent fake-venue`` options -> constructor keywords (see testing/cli.py)."""
        return {
            "symbols": [s.strip() for s in args.symbols.split(",") if s.strip()],
            "seed": args.seed,
            "events_per_s": args.rate,
        }

    def _owns_process(self) -> None:
        """Hook: process-wide tuning once serving in a process of its own."""

    @classmethod
    async def serve_forever(
        cls, host: str = "127.0.0.1", ws_port: int = 0, rest_port: int = 0, **options: Any
    ) -> None:
        """Run a venue built from ``options`` until cancelled (``mdagent fake-venue``).

        Prints one JSON line ``{"ws_url": ..., "rest_url": ...}`` on stdout once
        both ports listen, so a parent process can read where to connect.
        """
        venue = cls(**options)
        async with trio.open_nursery() as nursery:
            ws_url, rest_url = await nursery.start(
                partial(venue.serve, host=host, ws_port=ws_port, rest_port=rest_port)
            )
            venue._owns_process()
            nursery.start_soon(freeze_survivors)
            print(json.dumps({"ws_url": ws_url, "rest_url": rest_url}), flush=True)


def gc_view() -> dict[str, int]:
    """Objects the cyclic GC walks (its generations) and holds frozen, in this process."""
    return {
        "tracked": sum(len(gc.get_objects(generation)) for generation in range(3)),
        "frozen": gc.get_freeze_count(),
    }


# How long an object of a venue owning its process stays in the cyclic GC's view.
FREEZE_AFTER_S = 1.0


async def freeze_survivors(every_s: float = FREEZE_AFTER_S) -> None:
    """Move what survived ``every_s`` out of the cyclic GC (:func:`gc.freeze`), for ever.

    A venue's history (the fake Binance market keeps up to ``max_history``
    trades per symbol as tuples the collector tracks) otherwise makes each
    full collection walk all of it: ``mdagent bench``'s paced phase measured
    the fake Binance stopping for 20 ms growing to 1 s within 30 s. Events it
    had stamped waited that long, and its pacer then sent the missed second
    in one burst: both showed up as the agent's event -> commit latency.
    Freezing is O(1); a frozen object is still freed by reference counting,
    and the venue makes next to no cycles (about 500 objects in a 30 s paced
    run), so what this keeps from the collector is negligible.
    """
    while True:
        await trio.sleep(every_s)
        gc.freeze()


@asynccontextmanager
async def serving(venue: V) -> AsyncIterator[V]:
    """``venue`` serving (URLs set) for the duration of the block, then stopped.

    The one way tests run a fake venue in-process, whichever the provider.
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(venue.serve)
        yield venue
        nursery.cancel_scope.cancel()
