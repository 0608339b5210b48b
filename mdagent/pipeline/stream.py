"""One restartable stream task per source: its streams, its connections, its frames.

The loop: connect (the source's ``ConnectionPool``, ``pool.py``), read frames
into batches, hand batches to the normalizer over a bounded channel; on any
transient failure wait (backoff) and reconnect. About once a second the
per-stream activity rule (``streams.py``) runs over the source's streams: a
stream the venue seems to have dropped is subscribed again on the live
connection (in a task of its own: the reader reads the replies), then its
connection replaced. Three watchdogs end a connection on purpose:
- stale: no frame for ``stale_after_s`` (a silent half-open socket);
- age: ``max_connection_age_s`` (Binance closes at 24 h; we leave first),
  and a ``serverShutdown`` notice: make-before-break (``rotation.py``): a
  replacement is opened and read into a hold while this one is still read,
  and takes over once the two overlap on every stream;
- backpressure: the channel stayed full for ``backpressure_timeout_s``. We
  stop reading (the connection is closed, the provider drops what we do not
  read) rather than buffer without bound; the hole becomes a gap.
"""

from __future__ import annotations

import time

import attrs
import structlog
import trio

from mdagent.config import PipelineConfig, SourceConfig
from mdagent.errors import AuthFailed, FrameRefused, StreamError
from mdagent.pipeline.backoff import Backoff
from mdagent.pipeline.batches import FrameBatch
from mdagent.pipeline.health import StreamHealth
from mdagent.pipeline.metrics import Metrics
from mdagent.pipeline.pool import ConnectionPool
from mdagent.pipeline.rotation import Replacement
from mdagent.pipeline.streams import Stream, StreamRegistry
from mdagent.providers.base import Parser, StreamConnection, StreamHalf
from mdagent.records import DeadLetter
from mdagent.text import storable_text

log = structlog.get_logger("mdagent.stream")

# Auth failures are configuration problems: retry slowly, never in a hot loop.
AUTH_FAILED_RETRY_S = 60.0
# The per-stream activity rule (streams.py) runs at most this often: its
# cost is per stream of the source, never per frame.
STREAM_CHECK_EVERY_S = 1.0
# Subscribing one silent stream again (a few paced control messages) gets this
# long; past it the connection is replaced instead.
RENEW_TIMEOUT_S = 10.0


class _Reconnect(Exception):
    """Leave the current connection on purpose and connect again."""

    def __init__(self, reason: str, *, immediately: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.immediately = immediately


class _Stopped(Exception):
    """stop() was called: the frames read so far were handed on."""


class _Backpressured(_Reconnect):
    def __init__(self, held: FrameBatch) -> None:
        super().__init__("backpressure")
        self.held = held


class StreamTask:
    def __init__(
        self,
        source: SourceConfig,
        adapter: StreamHalf,
        frames_out: trio.MemorySendChannel[FrameBatch],
        pipeline: PipelineConfig,
        health: StreamHealth,
        metrics: Metrics,
        backoff: Backoff | None = None,
        streams: StreamRegistry | None = None,
    ) -> None:
        self.source = source
        self.adapter = adapter
        self.frames_out = frames_out
        self.pipeline = pipeline
        self.health = health
        self.metrics = metrics
        self.backoff = backoff or Backoff(source.reconnect_initial_s, source.reconnect_max_s)
        # Per-stream health of this source's streams (shared with the normalizer).
        self.streams = streams if streams is not None else StreamRegistry()
        # Set by a silent stream whose resubscribe did not help: the pump
        # replaces the connection (make-before-break) for this reason.
        self._rotate_request: str | None = None
        self.connects = 0
        # Receive time of the last frame handed on; marks where a break began.
        self._last_frame_ns: int | None = None
        # Graceful stop (shutdown, reload): cancel only the reading, hand on
        # what was read, then leave. See stop().
        self._stopping = False
        self._run_scope: trio.CancelScope | None = None
        self._read_scope: trio.CancelScope | None = None
        # The open connection and the parser of the batch being read: a reload
        # may change both while the connection stays (update()). A batch is
        # parsed with the parser current when it is handed on; a narrower one
        # waits in _next_parser until the batch holding frames read before the
        # venue's UNSUBSCRIBE reply is handed on.
        self._conn: StreamConnection | None = None
        self._parser: Parser | None = None
        self._parser_symbols: tuple[str, ...] = ()
        self._next_parser: tuple[Parser, tuple[str, ...]] | None = None
        self._leave_reason: str | None = None
        self._nursery: trio.Nursery | None = None
        self._pool: ConnectionPool | None = None
        self._close_conn: trio.Event | None = None
        # A reload's change of the subscription is in flight (update()): a
        # replacement opened now would subscribe the symbols before it, so
        # rotations wait for it; and a reload waits for a rotation in flight.
        self._updating = False
        self._rotation_over = trio.Event()

    async def run(self) -> None:
        """Connect, pump, reconnect: until stop() or cancelled."""
        key = self.source.key
        with (
            structlog.contextvars.bound_contextvars(source=key),
            trio.CancelScope() as self._run_scope,
        ):
            # The nursery holds the open connections (one, two while rotating):
            # each lives in a holder task until its close event is set.
            async with self.frames_out, trio.open_nursery() as self._nursery:
                self._pool = ConnectionPool(self.adapter, self._nursery)
                while not self._stopping:
                    delay = await self._one_connection()
                    if delay and not self._stopping:
                        log.info("stream.reconnect_wait", delay_s=round(delay, 3))
                        await trio.sleep(delay)
                self._nursery.cancel_scope.cancel()
        log.info("stream.stopped", graceful=self._stopping)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Stop reading, hand on the frames already read, then return from run().

        While a batch is being handed on nothing is cancelled (the caller's
        deadline bounds that wait); while connecting or waiting to reconnect
        there is nothing in hand, so the whole task is cancelled.
        """
        self._stopping = True
        if self._read_scope is not None:
            self._read_scope.cancel()
        elif not self._handing_on and self._run_scope is not None:
            self._run_scope.cancel()

    async def update(self, new: SourceConfig) -> bool:
        """Move the live connection to ``new`` (same connection settings, other symbols).

        True: the connection now carries ``new``'s streams (unchanged streams
        never stopped), or it failed half-way and this task reconnects with
        ``new`` by itself. False: nothing changed; the caller restarts the task.
        While the venue has not confirmed the change, frames of both the old
        and the new symbols are accepted, so data of a removed symbol read
        before its UNSUBSCRIBE reply is still stored. A rotation in flight
        is waited for (its replacement subscribes the symbols before the
        reload); one due meanwhile starts after the change is confirmed.
        """
        while self._replacement is not None:
            # Its connection subscribes self.source: change what the one that
            # takes over carries (the caller's deadline bounds the wait).
            await self._rotation_over.wait()
        conn, old = self._conn, self.source
        if conn is None or self._stopping or self._updating:
            return False
        self._updating = True
        try:
            return await self._update(conn, old, new)
        finally:
            self._updating = False

    async def _update(self, conn: StreamConnection, old: SourceConfig, new: SourceConfig) -> bool:
        # The batch in hand may hold frames of symbols an earlier reload removed
        # (its narrower parser not applied yet): keep accepting those too.
        self._use_parser(self._parser_symbols + old.symbols + new.symbols)
        try:
            moved = await conn.resubscribe(old, new)
        except StreamError as exc:
            log.warning("stream.resubscribe_failed", error=str(exc))
            self.source = new
            self._leave(f"resubscribe failed: {exc}")
            return True
        if conn is not self._conn:
            # The connection ended meanwhile and another may have opened with
            # ``old``: let the caller restart with ``new``.
            return False
        after = old if not moved else new
        self._next_parser = (self.adapter.new_parser(after), after.symbols)
        if not moved:
            return False
        self.source = new
        self.streams.attach(new, trio.current_time(), renamed_from=old.key)
        log.info("stream.resubscribed", symbols=len(new.symbols))
        return True

    def _leave(self, reason: str) -> None:
        """End the current connection after the batch in hand; reconnect at once."""
        self._leave_reason = reason
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def _one_connection(self) -> float:
        """Run one connection to its end; return how long to wait before the next."""
        key = self.source.key
        started = trio.current_time()
        try:
            assert self._pool is not None, "run() opens the pool"
            conn, self._close_conn = await self._pool.open(self.source)
            try:
                self.connects += 1
                self.health.connected = True
                self.health.auth_failed = False
                self.health.last_error = ""
                self.metrics.stream_connects.labels(key).inc()
                self.metrics.stream_connected.labels(key).set(1)
                log.info("stream.connected", connects=self.connects)
                self._conn = conn
                self._use_parser(self.source.symbols)
                self._leave_reason = None
                self._rotate_request = None
                self.streams.attach(self.source, trio.current_time())
                self.streams.connected(key, trio.current_time())
                await self._pump(conn, started)
            finally:
                self._conn = None
                self._close_conn.set()
                if self._replacement is not None:
                    self._replacement.abandon()
                    self._replacement = None
                    self._rotation_over.set()
        except _Backpressured as exc:
            self._mark_down(exc.reason)
            self.metrics.backpressure_stops.labels(key).inc()
            log.warning("stream.backpressure_stop", timeout_s=self.pipeline.backpressure_timeout_s)
            # Deliver what we hold (one batch: bounded) before reading again.
            await self.frames_out.send(exc.held)
            return self.backoff.next_delay()
        except _Stopped:
            self._mark_down("stopped")
            return 0.0
        except _Reconnect as exc:
            self._mark_down(exc.reason)
            log.info("stream.reconnecting", reason=exc.reason)
            if exc.immediately:
                return 0.0
        except AuthFailed as exc:
            self._mark_down(str(exc))
            self.health.auth_failed = True
            self.metrics.stream_errors.labels(key, "auth_failed").inc()
            log.error("stream.auth_failed", error=str(exc), retry_in_s=AUTH_FAILED_RETRY_S)
            return AUTH_FAILED_RETRY_S
        except StreamError as exc:
            self._mark_down(str(exc))
            self.metrics.stream_errors.labels(key, type(exc).__name__).inc()
            log.warning("stream.error", error=str(exc))
        if trio.current_time() - started >= self.source.stable_after_s:
            self.backoff.reset()
        return self.backoff.next_delay()

    _replacement: Replacement | None = None

    def _start_replacement(self, reason: str) -> Replacement:
        """Open the connection that takes over (make-before-break), in the background."""
        assert self._nursery is not None and self._pool is not None
        replacement = Replacement(
            self.source,
            reason,
            self.adapter.new_parser(self.source),
            self.adapter.new_parser(self.source),
            [s.key[1:] for s in self.streams.of_source(self.source.key) if s.missing],
        )
        self._nursery.start_soon(
            replacement.run, self._pool.open, name=f"replace:{self.source.key}"
        )
        log.info("stream.rotation_started", reason=reason)
        return replacement

    async def _switch(self, replacement: Replacement, why: str) -> StreamConnection:
        """Close the old connection, hand on the replacement's held frames, read it from now."""
        conn, close, held = await replacement.take_over()
        old_close, self._close_conn, self._conn = self._close_conn, close, conn
        self._replacement = None
        self._rotation_over.set()
        # The new connection subscribed every stream afresh: a silent stream's
        # request for a replacement is answered by this one.
        self._rotate_request = None
        if old_close is not None:
            old_close.set()
        waiting = replacement.overlap.waiting_for()
        outcome = "seamless" if not waiting else "bounded"
        self.metrics.stream_rotations.labels(self.source.key, outcome).inc()
        log.info(
            "stream.rotated",
            reason=replacement.reason,
            switch=why,
            overlap_s=round(trio.current_time() - replacement.started_at, 3),
            held_frames=len(held),
            waiting=waiting[:10],
        )
        if held:
            self._last_frame_ns = held[-1][1]
            await self._hand_on(FrameBatch(self.source, self._current_parser(), held))
        return conn

    def _mark_down(self, reason: str) -> None:
        self.health.connected = False
        self.health.last_error = reason
        self.metrics.stream_connected.labels(self.source.key).set(0)

    async def _pump(self, conn: StreamConnection, connected_at: float) -> None:
        """Read frames into batches until a watchdog or the provider ends the connection."""
        max_frames = self.pipeline.frame_batch_max
        max_bytes = self.pipeline.frame_batch_max_bytes
        delay = self.pipeline.frame_batch_delay_s
        stale_after = self.source.stale_after_s or float("inf")
        max_age = self.source.max_connection_age_s
        key = self.source.key
        received = self.metrics.frames_received.labels(key)
        last_frame_gauge = self.metrics.stream_last_frame.labels(key)
        resumed_after = self._last_frame_ns if self.connects > 1 else None
        last_frame_at = trio.current_time()
        next_check_at = last_frame_at + STREAM_CHECK_EVERY_S
        reconnect: _Reconnect | None = None
        rotate: str | None = None  # why the connection should be replaced
        while reconnect is None:
            frames: list[tuple[str | bytes, int]] = []
            size = 0
            try:
                # One cancel scope per batch, not per frame: cancelling a
                # get_message() loses nothing (it waits on a memory channel).
                with trio.move_on_after(delay) as self._read_scope:
                    if self._stopping:
                        self._read_scope.cancel()
                    while len(frames) < max_frames and size < max_bytes and rotate is None:
                        # One socket read can carry many frames: they share its receive time.
                        batch = await conn.receive_batch()
                        received_ns = time.time_ns()
                        for frame in batch:
                            frames.append((frame, received_ns))
                            size += len(frame)
                            reason = conn.reconnect_reason(frame)
                            if reason is not None and self._replacement is None:
                                rotate = reason
            except StreamError as exc:
                # The connection dropped: what it delivered before is kept,
                # and a frame the WebSocket layer refused leaves a dead letter.
                self._read_scope = None
                refused = self._refusal(exc)
                if frames or refused:
                    await self._hand_on(
                        FrameBatch(
                            self.source, self._current_parser(), frames, resumed_after, refused
                        )
                    )
                if frames:
                    self._last_frame_ns = frames[-1][1]
                replacement = self._replacement
                if replacement is not None:
                    replacement.old_delivered(frames)
                    if await replacement.wait_opened():
                        # The venue ended the old one first (serverShutdown, age):
                        # the replacement was already subscribed and reading.
                        conn = await self._switch(replacement, f"old ended: {exc}")
                        connected_at, last_frame_at = replacement.started_at, trio.current_time()
                        continue
                raise
            except BaseException:
                # Cancelled (forced shutdown): what we already received still
                # goes on if there is room (no await: we are being cancelled).
                self._read_scope = None
                if frames:
                    try:
                        self.frames_out.send_nowait(
                            FrameBatch(self.source, self._current_parser(), frames, resumed_after)
                        )
                        self._last_frame_ns = frames[-1][1]
                    except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                        log.warning("stream.frames_dropped_at_exit", frames=len(frames))
                raise
            self._read_scope = None
            now = trio.current_time()
            if frames:
                if self.source.key != key:
                    # A reload changed an unnamed source's symbols (its key) live.
                    key = self.source.key
                    received = self.metrics.frames_received.labels(key)
                    last_frame_gauge = self.metrics.stream_last_frame.labels(key)
                    structlog.contextvars.bind_contextvars(source=key)
                last_frame_at = now
                received.inc(len(frames))
                last_frame_gauge.set(frames[-1][1] / 1e9)
                self._last_frame_ns = frames[-1][1]
                self.health.last_frame_at = now
                await self._hand_on(
                    FrameBatch(self.source, self._current_parser(), frames, resumed_after)
                )
                resumed_after = None
                if self._next_parser is not None:
                    self._parser, self._parser_symbols = self._next_parser
                    self._next_parser = None
            if self._stopping:
                raise _Stopped
            elif self._leave_reason is not None:
                reconnect = _Reconnect(self._leave_reason, immediately=True)
            elif now - last_frame_at > stale_after:
                reconnect = _Reconnect(f"stale: no frame for {stale_after:g} s")
                continue
            if now >= next_check_at:
                next_check_at = now + STREAM_CHECK_EVERY_S
                self._check_streams(conn, now)
            replacement = self._replacement
            if replacement is None:
                if rotate is None and now - connected_at > max_age:
                    rotate = "max connection age"
                if rotate is None and self._rotate_request is not None:
                    rotate, self._rotate_request = self._rotate_request, None
                if rotate is not None and self._updating:
                    # Started once the reload's change is confirmed (update()).
                    self._rotate_request, rotate = rotate, None
                if rotate is not None:
                    self._rotation_over = trio.Event()
                    self._replacement = self._start_replacement(rotate)
                    rotate = None
                continue
            replacement.old_delivered(frames)
            if replacement.failed is not None:
                # No make-before-break this time: break, then make (a gap the
                # normalizer records as after any reconnect).
                self.metrics.stream_rotations.labels(self.source.key, "failed").inc()
                reconnect = _Reconnect(
                    f"{replacement.reason}; replacement failed: {replacement.failed}",
                    immediately=True,
                )
            elif replacement.ready(now):
                conn = await self._switch(replacement, "covered")
                connected_at, last_frame_at = replacement.started_at, trio.current_time()
        raise reconnect

    def _check_streams(self, conn: StreamConnection, now: float) -> None:
        """Apply the per-stream activity rule; act on streams the venue seems to have dropped."""
        renew: list[Stream] = []
        for stream, action in self.streams.check(self.source.key, now, self.source.quiet_time_s):
            if action == "resubscribe":
                renew.append(stream)
            else:
                self._request_rotation([stream])
        if renew:
            assert self._nursery is not None
            log.warning(
                "stream.silent",
                streams=[s.name() for s in renew],
                quiet_time_s=self.source.quiet_time_s,
                action="resubscribe",
            )
            self._nursery.start_soon(self._renew, conn, renew, name=f"renew:{self.source.key}")

    def _request_rotation(self, streams: list[Stream]) -> None:
        names = ", ".join(s.name() for s in streams)
        log.warning("stream.silent", streams=names, action="reconnect")
        self._rotate_request = f"silent stream {names}"

    async def _renew(self, conn: StreamConnection, streams: list[Stream]) -> None:
        """Subscribe ``streams`` again on ``conn`` (in its own task: the reader reads the replies)."""
        done = False
        try:
            with trio.move_on_after(RENEW_TIMEOUT_S):
                done = await conn.renew([(s.key[1], s.key[2]) for s in streams])
        except StreamError as exc:
            if conn is self._conn:
                self._leave(f"resubscribing a silent stream failed: {exc}")
            return
        if conn is not self._conn:
            return  # that connection is gone; its successor subscribed afresh
        if done:
            self.metrics.stream_resubscribes.labels(self.source.key).inc(len(streams))
            log.info("stream.silent_resubscribed", streams=[s.name() for s in streams])
            return
        # This connection cannot subscribe one stream again: replace it now.
        now = trio.current_time()
        for stream in streams:
            self.streams.reconnecting(stream, now)
        self._request_rotation(streams)

    def _use_parser(self, symbols: tuple[str, ...]) -> None:
        """Parse from now on with a parser accepting ``symbols`` (order kept, no repeats)."""
        self._parser_symbols = tuple(dict.fromkeys(symbols))
        self._parser = self.adapter.new_parser(
            attrs.evolve(self.source, symbols=self._parser_symbols)
        )
        self._next_parser = None

    def _current_parser(self) -> Parser:
        assert self._parser is not None, "set when the connection opened"
        return self._parser

    def _refusal(self, exc: StreamError) -> tuple[DeadLetter, ...]:
        """The dead letter (and count) of a frame refused with close 1007 / 1009, if any."""
        if not isinstance(exc, FrameRefused):
            return ()
        self.metrics.frames_refused.labels(self.source.key, str(exc.code)).inc()
        log.warning("stream.frame_refused", code=exc.code, reason=exc.reason)
        reason = f"websocket close {exc.code}: {exc.reason}"
        return (
            DeadLetter(
                self.source.provider,
                self.source.key,
                storable_text(reason, 500),
                storable_text(exc.head),
                time.time_ns(),
            ),
        )

    _handing_on = False

    async def _hand_on(self, batch: FrameBatch) -> None:
        try:
            self.frames_out.send_nowait(batch)
            return
        except trio.WouldBlock:
            pass
        self._handing_on = True
        try:
            with trio.move_on_after(self.pipeline.backpressure_timeout_s):
                await self.frames_out.send(batch)
                return
        finally:
            self._handing_on = False
        raise _Backpressured(batch)
