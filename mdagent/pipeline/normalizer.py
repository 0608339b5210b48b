"""The normalizer: raw frame batches in, record batches out.

It parses frames with the source's parser and keeps, per (provider, symbol,
channel), the last sequence and time seen. That state does two jobs cheaply,
in memory, before anything reaches the database:
- dedup, by what the provider guarantees (``SequenceRule.identifies``): where
  the sequence identifies a record (Binance ids), a record at or below the
  last sequence (a re-sent frame, a replay after reconnect, a restart: the
  state starts from ``stream_offsets``) is dropped; where it does not
  (Polygon ``q``), a record is dropped only when a record with the same
  natural key passed here recently (``pipeline/dedup.py``), and the database's
  natural key judges the rest. Either way the writer's fast COPY path rarely
  meets a conflict;
- gaps: a jump in a contiguous sequence, a missing kline bar, or the silence
  of a reconnect becomes a Gap record, which the writer turns into a
  ``fetch_jobs`` row in the same transaction as the data around it.

Bad input never stops the pipeline: a parser promises not to raise, and a
frame whose parsing raises anyway becomes a dead letter with the exception.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import attrs
import structlog
import trio

from mdagent.pipeline.batches import FrameBatch, WriteBatch
from mdagent.pipeline.dedup import TOTAL_KEYS, KeyBudget, RecentKeys
from mdagent.pipeline.metrics import Metrics
from mdagent.pipeline.streams import StreamRegistry
from mdagent.providers.base import SequenceRule
from mdagent.providers.registry import provider_for
from mdagent.records import Candle, DeadLetter, Gap, Quote, RawFrame, Record, StreamControl, Trade
from mdagent.text import storable_text

log = structlog.get_logger("mdagent.normalizer")

NS_PER_MS = 1_000_000
OffsetKey = tuple[str, str, str]
# Jumps remembered per contiguous stream for late records (a jump is rare:
# Binance delivers in order; the bound keeps a flapping stream's state small).
HOLES_KEPT = 64


@attrs.define
class ChannelState:
    rule: SequenceRule
    last_seq: int | None = None
    last_ts_ns: int | None = None
    # Set after a reconnect or restart: the time the silence began. The next
    # record closes the hole with a time-range gap (non-contiguous channels).
    resume_from_ns: int | None = None
    last_bar_final: bool = True
    # Natural keys recently passed on, for channels whose seq is no identity,
    # and the greatest seq seen in the current session (an ordering hint).
    recent: RecentKeys | None = None
    max_seq: int | None = None
    session_start_ns: int = 0
    session_end_ns: int = -1
    # Contiguous ids this process has not seen although they are at or below
    # last_seq: the ids before the first one seen (when no offset was loaded)
    # and the recent jumps. A late record there is no duplicate. Created at
    # the first jump: an empty deque is ~600 bytes, and a wildcard source has
    # a state for every ticker of the market.
    first_seen_seq: int | None = None
    holes: deque[tuple[int, int]] | None = None

    def never_seen(self, seq: int) -> bool:
        """True when ``seq`` (at or below ``last_seq``) was never passed on by this stream."""
        first = self.first_seen_seq
        if first is not None and seq < first:
            return True
        holes = self.holes
        return holes is not None and any(low <= seq <= high for low, high in holes)


def _enter_session(state: ChannelState, ts_ns: int) -> bool:
    """For a record outside the current session: True if it opens a newer one.

    A newer session may restart the seq, so its greatest seq starts over. A
    record of an older session (late) leaves the state alone: it is checked
    against the window without the seq hint.
    """
    if ts_ns < state.session_start_ns:
        return False
    bounds = state.rule.session_bounds_ns
    start, end = bounds(ts_ns) if bounds is not None else (-(1 << 63), 1 << 63)
    state.session_start_ns, state.session_end_ns = start, end
    state.max_seq = None
    return True


class Normalizer:
    def __init__(
        self,
        metrics: Metrics,
        offsets: dict[OffsetKey, tuple[int | None, int | None]],
        keys_total: int = TOTAL_KEYS,
    ) -> None:
        """``keys_total``: the dedup windows' key bound (``pipeline/dedup.py``)."""
        self.metrics = metrics
        self.states: dict[OffsetKey, ChannelState] = {}
        self.key_budget = KeyBudget(total=keys_total)
        for (provider, symbol, channel), (seq, ts_ns) in offsets.items():
            state = self._new_state(provider, channel)
            state.last_seq, state.last_ts_ns = seq, ts_ns
            # We were not running: everything since the last commit is unknown.
            # (A candle offset is the open time of the last final bar.)
            state.resume_from_ns = ts_ns
            self.states[(provider, symbol, channel)] = state

    @staticmethod
    def _new_state(provider: str, channel: str) -> ChannelState:
        return ChannelState(provider_for(provider).sequence_rule(channel))

    def normalize(self, batch: FrameBatch) -> WriteBatch:
        out = WriteBatch()
        source = batch.source
        if batch.resumed_after_ns is not None:
            self._mark_resumed(source.provider, source.channels, batch.resumed_after_ns)
        parse = batch.parser.parse
        archive = source.archive_raw
        trades, quotes = out.trades, out.quotes
        # Streams that took a trade or quote in this batch: their offsets are
        # read once at the end rather than stored per record.
        advanced: dict[OffsetKey, ChannelState] = {}
        for payload, received_ns in batch.frames:
            if archive:
                text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
                out.raw.append(RawFrame(source.provider, source.key, text, received_ns))
            records: Sequence[Record]
            try:
                records = parse(payload, received_ns)
            except Exception as exc:
                records = [
                    self._parser_fault(source.provider, source.key, payload, received_ns, exc)
                ]
            for record in records:
                if isinstance(record, Quote):
                    # A quote's sequence is its identity within its time.
                    if self._accept_sequenced(record, None, out, advanced):
                        quotes.append(record)
                elif isinstance(record, Trade):
                    if self._accept_sequenced(record, record.trade_id, out, advanced):
                        trades.append(record)
                elif isinstance(record, Candle):
                    self._accept_candle(record, out)
                elif isinstance(record, DeadLetter):
                    out.dead.append(record)
                    self.metrics.dead_letters.labels(source.provider).inc()
                elif isinstance(record, StreamControl):
                    self._log_control(record)
        if batch.refused:
            out.dead.extend(batch.refused)
            self.metrics.dead_letters.labels(source.provider).inc(len(batch.refused))
        # Streams advanced only by records of these frames: there is a last one.
        now_ns = batch.frames[-1][1] if advanced else 0
        for key, state in advanced.items():
            out.offsets[key] = (state.last_seq, state.last_ts_ns)
            recent = state.recent
            if recent is not None and recent.full(now_ns):
                recent.rotate(now_ns)
        for gap in out.gaps:
            self.metrics.gaps.labels(gap.provider, gap.channel).inc()
        produced_total = self.metrics.records
        for kind_name, produced in (
            ("trade", out.trades),
            ("quote", out.quotes),
            ("candle", out.candles),
        ):
            if produced:
                produced_total.labels(source.provider, kind_name).inc(len(produced))
        return out

    def _add_state(self, key: OffsetKey) -> ChannelState:
        """The state of a stream seen for the first time (callers look it up first)."""
        provider, _symbol, channel = key
        state = self.states[key] = self._new_state(provider, channel)
        return state

    def _accept_sequenced(
        self,
        rec: Trade | Quote,
        ident: str | int | None,
        out: WriteBatch,
        advanced: dict[OffsetKey, ChannelState],
    ) -> bool:
        """False for a record already seen; True after advancing its stream past it.

        ``ident`` is the record's identity within its time and sequence (a
        trade id; None for a quote, whose sequence is its identity), for
        channels whose sequence does not identify a record.

        Runs for every trade and quote, so the common case (the next sequence,
        no reconnect pending) takes the fewest steps.
        """
        key = (rec.provider, rec.symbol, rec.channel)
        state = self.states.get(key) or self._add_state(key)
        seq = rec.seq
        recent = state.recent
        if recent is None and not state.rule.identifies:
            recent = state.recent = RecentKeys(self.key_budget)
        if recent is not None:
            # Dedup by natural key (README "Natural keys"): a trade by its
            # id, a quote by its sequence, each with its time (full ns: a
            # window miss only sends a repeat on to the database's key).
            ts_ns = rec.ts_ns
            # What the window keeps of the record (pipeline/dedup.py): its
            # time, the record's own int (no allocation), and a trade's id.
            mark = ts_ns if ident is None else (ts_ns, ident)
            in_session = state.session_start_ns <= ts_ns < state.session_end_ns
            if not in_session:
                in_session = _enter_session(state, ts_ns)
            max_seq = state.max_seq
            if in_session and seq is not None and max_seq is not None and seq > max_seq:
                # Above every seq of this session: no record seen in it can
                # be this one's original, so no lookup (pipeline/dedup.py).
                recent.recent[seq] = mark
                state.max_seq = seq
            elif recent.seen_or_add(mark, seq, (ident, ts_ns)):
                self.metrics.duplicates_dropped.labels(rec.provider, rec.channel).inc()
                return False
            elif in_session and seq is not None and (max_seq is None or seq > max_seq):
                state.max_seq = seq
            last_seq = state.last_seq
            # The offset follows the newest record (db/offsets.py); ties in
            # time keep the greater sequence.
            last_ts = state.last_ts_ns
            if last_ts is None or ts_ns > last_ts:
                state.last_seq = seq
                state.last_ts_ns = ts_ns
            elif ts_ns == last_ts and seq is not None and (last_seq is None or seq > last_seq):
                state.last_seq = seq
        else:
            last = state.last_seq
            if seq is not None and last is not None:
                if seq <= last:
                    if state.never_seen(seq):
                        # Late but new: passed on, the database's natural key
                        # judges it; the offset and any recorded gap stay.
                        return True
                    self.metrics.duplicates_dropped.labels(rec.provider, rec.channel).inc()
                    return False
                if seq > last + 1 and state.rule.contiguous:
                    if state.holes is None:
                        state.holes = deque(maxlen=HOLES_KEPT)
                    state.holes.append((last + 1, seq - 1))
                    out.gaps.append(
                        Gap(
                            rec.provider,
                            rec.symbol,
                            rec.channel,
                            "sequence jump",
                            from_seq=last + 1,
                            to_seq=seq - 1,
                        )
                    )
            if seq is not None:
                if last is None and state.rule.contiguous:
                    state.first_seen_seq = seq
                state.last_seq = seq
            state.last_ts_ns = rec.ts_ns
        if state.resume_from_ns is not None:
            self._close_resume_gap(state, rec, out)
        advanced[key] = state
        return True

    @staticmethod
    def _parser_fault(
        provider: str, source: str, payload: str | bytes, received_ns: int, exc: Exception
    ) -> DeadLetter:
        """The dead letter of a frame whose parser raised (a parser bug, never the pipeline's end)."""
        log.error("normalizer.parser_raised", source=source, error=repr(exc)[:500])
        reason = f"parser raised {type(exc).__name__}: {exc}"
        return DeadLetter(
            provider, source, storable_text(reason, 1000), storable_text(payload), received_ns
        )

    @staticmethod
    def _close_resume_gap(state: ChannelState, rec: Trade | Quote, out: WriteBatch) -> None:
        resume_from = state.resume_from_ns
        assert resume_from is not None
        if state.rule.contiguous:
            state.resume_from_ns = None  # the sequence check covers the hole exactly
        elif rec.ts_ns > resume_from:
            out.gaps.append(
                Gap(
                    rec.provider,
                    rec.symbol,
                    rec.channel,
                    "reconnect",
                    from_ts_ns=resume_from,
                    to_ts_ns=rec.ts_ns,
                )
            )
            state.resume_from_ns = None
        # else: a late record from before the break; the hole is still open.

    def _accept_candle(self, bar: Candle, out: WriteBatch) -> None:
        key = (bar.provider, bar.symbol, bar.channel)
        state = self.states.get(key) or self._add_state(key)
        last_open = state.last_ts_ns
        interval = state.rule.candle_interval_ns
        if last_open is not None and bar.open_ts_ns < last_open:
            # An older bar re-sent: the upsert keeps the newest version anyway.
            out.candles.append(bar)
            return
        if last_open is not None and bar.open_ts_ns > last_open:
            if interval is not None:
                # Bars exist for every interval: a skipped open time, or a bar
                # whose final version we never saw, is a hole to backfill.
                first_missing = last_open if not state.last_bar_final else last_open + interval
                if first_missing < bar.open_ts_ns:
                    out.gaps.append(
                        Gap(
                            bar.provider,
                            bar.symbol,
                            bar.channel,
                            "missing bars",
                            from_ts_ns=first_missing,
                            to_ts_ns=bar.open_ts_ns - 1,
                        )
                    )
            elif state.resume_from_ns is not None:
                # Bars that opened while we were away (and the last one we
                # saw, which may have been corrected meanwhile). Bar times,
                # not receive times: a bar opens before it is sent.
                out.gaps.append(
                    Gap(
                        bar.provider,
                        bar.symbol,
                        bar.channel,
                        "reconnect",
                        from_ts_ns=last_open,
                        to_ts_ns=bar.open_ts_ns - 1,
                    )
                )
        if last_open is None or bar.open_ts_ns > last_open:
            # The hole (if any) closes at the first bar newer than the last
            # one seen; a re-send of that last bar says nothing about the bars
            # that may have opened after it while we were away.
            state.resume_from_ns = None
        if last_open is None or bar.open_ts_ns >= last_open:
            state.last_ts_ns = bar.open_ts_ns
            state.last_bar_final = bar.final
        out.candles.append(bar)
        if bar.final:
            # Only a final bar counts as received: the open bar is re-sent.
            out.offsets[key] = (None, bar.open_ts_ns)
        elif interval is None and state.last_ts_ns is not None:
            # Bars that are never final (Polygon): the newest open time seen is
            # the offset, so a restart knows where the silence began and the
            # bars that opened meanwhile become a reconnect gap, as for trades.
            out.offsets[key] = (None, state.last_ts_ns)

    def _mark_resumed(self, provider: str, channels: tuple[str, ...], after_ns: int) -> None:
        for (p, _symbol, channel), state in self.states.items():
            rule = state.rule
            if (
                p == provider
                and channel in channels
                and not rule.contiguous
                and rule.candle_interval_ns is None
            ):
                # Bounded in the provider's clock: the last event time seen.
                # The receive time of the last frame lags it, and what the
                # venue stamped in between would fall outside the window.
                last = state.last_ts_ns
                state.resume_from_ns = after_ns if last is None else min(last, after_ns)

    def _log_control(self, control: StreamControl) -> None:
        if control.kind == "error" or control.status in ("auth_failed", "max_connections", "error"):
            log.error(
                "provider.status",
                provider=control.provider,
                kind=control.kind,
                status=control.status,
                message=control.message,
            )
        else:
            log.info(
                "provider.status",
                provider=control.provider,
                kind=control.kind,
                status=control.status,
                message=control.message,
            )


async def run_normalizer(
    normalizer: Normalizer,
    frames_in: trio.MemoryReceiveChannel[FrameBatch],
    records_out: trio.MemorySendChannel[WriteBatch],
    streams: StreamRegistry | None = None,
) -> None:
    """Until the streams close the frames channel: parse, then hand on (blocking when full).

    ``streams``: per-stream health, told once per frame batch what it brought.
    """
    streams = streams if streams is not None else StreamRegistry()
    async with frames_in, records_out:
        async for frame_batch in frames_in:
            out = normalizer.normalize(frame_batch)
            streams.observe(frame_batch, out, trio.current_time())
            # Coalesce what is already waiting: fewer, larger batches downstream.
            while len(out) < 2048:
                try:
                    more = frames_in.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                part = normalizer.normalize(more)
                streams.observe(more, part, trio.current_time())
                out.merge(part)
            if len(out) or out.offsets:
                await records_out.send(out)
