"""`mdagent bench`: throughput, latency and memory of the agent, next to bare references.

One run, one machine, figures only (never a pass/fail on timing):

1. Agent, max rate: the real :class:`~mdagent.pipeline.agent.Agent` in this
   process against a fake venue in a child process serving as fast as it can;
   committed rows/s over a steady-state window after a warm-up.
2. Agent, fixed rate: the venue paced at ``--latency-rate`` events/s in total;
   event time -> commit latency percentiles (the venue stamps event time when
   it generates the event, just before sending it).
3. Peak RSS of this process over the agent phases (read before the
   references run, so their buffers do not count).
4. Reference A: one bare trio-websocket client calling ``get_message()`` in a
   loop on one connection to the same fake venue: frames/s (and events/s).
5. Reference B: the rows of the frames captured by reference A, built up
   front, then written with plain psycopg binary COPY (no mdagent writer code)
   into ``trades``/``quotes`` of a fresh migrated database, one transaction
   per ``batch_max_rows`` rows, like the agent: rows/s.

Each phase gets its own venue process and its own fresh database on the same
server (an embedded one in a temporary directory unless ``--dsn``), so no
phase sees another's offsets or rows. Targets that are missed are printed as
"target missed" lines; the exit status is 1 only when something failed to run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import psycopg
import trio
import trio_websocket
from psycopg import conninfo

from mdagent.config import Config, DatabaseConfig, HttpConfig, PipelineConfig
from mdagent.db.dsn import dsn_problem, masked_dsn
from mdagent.db.migrate import migrate
from mdagent.procs import end_process
from mdagent.providers.wsclient import connect_websocket
from mdagent.testing.kit import BenchError, BenchProfile, Captured, TableRow, kit_for

EXIT_OK = 0
EXIT_FAILED = 1

# Targets (printed next to the figures; never an exit status). The ratio
# targets are each provider's (testing/<provider>/bench.py).
TARGET_P99_S = 0.250
TARGET_P99_AT_RATE = 5000.0
TARGET_RSS_MB = 200.0
# Reference B copies at most this many captured rows.
REFERENCE_MAX_ROWS = 300_000
VENUE_START_TIMEOUT_S = 30.0

_TRADE_COLUMNS = (
    "provider", "symbol", "channel", "trade_id", "ts", "ts_ns", "seq", "price", "size",
    "is_buyer_maker", "exchange", "tape", "conditions", "trf_id", "first_trade_id",
    "last_trade_id", "correction", "received_at",
)  # fmt: skip
_TRADE_TYPES = (
    "text", "text", "text", "text", "timestamptz", "int8", "int8", "numeric", "numeric",
    "bool", "int4", "int2", "int4[]", "int4", "int8", "int8", "int4", "timestamptz",
)  # fmt: skip
_QUOTE_COLUMNS = (
    "provider", "symbol", "channel", "seq", "ts", "ts_ns", "bid_price", "bid_size",
    "ask_price", "ask_size", "bid_exchange", "ask_exchange", "conditions", "indicators",
    "tape", "received_at",
)  # fmt: skip
_QUOTE_TYPES = (
    "text", "text", "text", "int8", "timestamptz", "int8", "numeric", "numeric",
    "numeric", "numeric", "int4", "int4", "int4[]", "int4[]", "int2", "timestamptz",
)  # fmt: skip


@attrs.define
class Settings:
    provider: str
    symbols: int
    duration_s: float
    latency_rate: float
    latency_duration_s: float
    dsn: str
    warmup_s: float
    reference_s: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        if args.symbols < 1:
            raise BenchError("--symbols must be >= 1")
        if args.duration <= 0 or args.latency_duration <= 0 or args.latency_rate <= 0:
            raise BenchError("--duration, --latency-duration and --latency-rate must be > 0")
        return cls(
            provider=args.provider,
            symbols=args.symbols,
            duration_s=float(args.duration),
            latency_rate=float(args.latency_rate),
            latency_duration_s=float(args.latency_duration),
            dsn=args.dsn,
            warmup_s=min(3.0, max(1.0, args.duration / 4)),
            reference_s=min(5.0, max(2.0, args.duration / 4)),
        )

    @property
    def profile(self) -> BenchProfile:
        """How this provider's fake venue is driven (its testing kit)."""
        return kit_for(self.provider).bench

    def symbol_names(self) -> list[str]:
        return self.profile.symbol_names(self.symbols)

    def connections(self) -> int:
        return self.profile.connections(self.symbols)


@attrs.define
class CpuSample:
    """Cumulative CPU seconds of this process, the venue process and the whole machine."""

    wall: float
    agent_s: float
    venue_s: float | None
    machine_busy_s: float | None

    @classmethod
    def take(cls, venue_pid: int) -> CpuSample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            wall=time.perf_counter(),
            agent_s=usage.ru_utime + usage.ru_stime,
            venue_s=_proc_cpu_s(venue_pid),
            machine_busy_s=_machine_busy_s(),
        )


def _proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3; utime, stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu_percent(a: CpuSample, b: CpuSample) -> dict[str, float | None]:
    wall = b.wall - a.wall

    def pct(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None or wall <= 0 else round(100 * (y - x) / wall, 1)

    return {
        "agent_process": pct(a.agent_s, b.agent_s),
        "venue_process": pct(a.venue_s, b.venue_s),
        "machine": pct(a.machine_busy_s, b.machine_busy_s),
    }


def _memory_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    hwm = _memory_kb("VmHWM")
    if hwm is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / (1 << 20) if sys.platform == "darwin" else maxrss / 1024
    return hwm / 1024


# -- processes and databases -------------------------------------------------------------------


@attrs.define
class Venue:
    proc: subprocess.Popen[bytes]
    ws_url: str
    rest_url: str
    api_keys: list[str]


@contextlib.contextmanager
def fake_venue(
    provider: str, symbols: Sequence[str], rate: float, keys: int, *, late_trades: bool = True
) -> Iterator[Venue]:
    """The fake venue as a child process (``mdagent fake-venue``), terminated on exit.

    ``late_trades=False``: no trades reported late (their event time is
    deliberately old, which would measure the fake, not the agent's latency)."""
    api_keys = [f"bench-key-{i}" for i in range(max(1, keys))]
    cmd = [
        sys.executable, "-m", "mdagent", "fake-venue", provider,
        "--symbols", ",".join(symbols), "--rate", repr(float(rate)),
        "--port", "0", "--rest-port", "0",
    ]  # fmt: skip
    cmd += kit_for(provider).bench.venue_args(api_keys, late_trades=late_trades)
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr)
        try:
            line = _read_line(proc, VENUE_START_TIMEOUT_S)
            if not line:
                proc.kill()
                proc.wait()
                stderr.seek(0)
                tail = stderr.read()[-2000:].decode("utf-8", "replace")
                raise BenchError(f"the fake venue did not start: {' '.join(cmd)}\n{tail}")
            urls = json.loads(line)
            yield Venue(proc, urls["ws_url"], urls["rest_url"], api_keys)
        finally:
            end_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def _read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return b""
    return proc.stdout.readline()


@contextlib.contextmanager
def database_server(dsn: str) -> Iterator[str]:
    """A server DSN: ``--dsn`` as given, or an embedded server in a temporary directory."""
    if dsn != "embedded":
        yield dsn
        return
    from mdagent.db.embedded import start_embedded

    with tempfile.TemporaryDirectory(prefix="mdagent-bench-") as tmp:
        server = start_embedded(tmp)
        try:
            yield server.get_uri()
        finally:
            with contextlib.suppress(Exception):
                server.cleanup()


@contextlib.contextmanager
def fresh_database(server_dsn: str, label: str) -> Iterator[str]:
    """A new, migrated database on the server; dropped on exit."""
    name = f"mdagent_bench_{label}_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        # libpq's parse errors quote the DSN (its password too): say why it
        # does not parse with dsn_problem, and show the server masked.
        reason = dsn_problem(server_dsn) or (str(exc).strip().splitlines() or ["?"])[0]
        raise BenchError(
            f"cannot create a database on {masked_dsn(server_dsn)!r}: {reason}"
        ) from exc
    dsn = conninfo.make_conninfo(server_dsn, dbname=name)
    try:
        migrate(dsn)
        yield dsn
    finally:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(server_dsn, autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- agent phases ------------------------------------------------------------------------------


def agent_config(settings: Settings, venue: Venue) -> Config:
    names = settings.symbol_names()
    n = settings.connections()
    groups = [names[i::n] for i in range(n)]
    sources = []
    for i, group in enumerate(groups):
        sources.append(
            settings.profile.source(i, group, venue.ws_url, venue.rest_url, venue.api_keys[i])
        )
    # Production defaults everywhere except HTTP (no fixed port in a bench).
    return Config(
        sources=tuple(sources),
        database=DatabaseConfig(),
        http=HttpConfig(enabled=False),
        pipeline=PipelineConfig(),
    )


@attrs.define
class AgentPhase:
    rows: int
    seconds: float
    latencies_s: list[float]
    cpu: dict[str, float | None]
    rss_mb: tuple[float, float]  # at the start and the end of the window

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


async def run_agent_phase(
    config: Config, dsn: str, venue: Venue, warmup_s: float, duration_s: float
) -> AgentPhase:
    from mdagent.pipeline.agent import Agent

    agent = Agent(config, dsn, handle_signals=False)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await trio.sleep(warmup_s)
            rows0 = agent.writer.rows_committed
            agent.writer.latencies_s.clear()  # only this window's samples
            cpu0 = CpuSample.take(venue.proc.pid)
            rss0 = (_memory_kb("VmRSS") or 0) / 1024
            await trio.sleep(duration_s)
            cpu1 = CpuSample.take(venue.proc.pid)
            rss1 = (_memory_kb("VmRSS") or 0) / 1024
            rows1 = agent.writer.rows_committed
            latencies = list(agent.writer.latencies_s)
            agent.request_shutdown()
    finally:
        agent.copy_writer.close()
    if venue.proc.poll() is not None:
        raise BenchError(f"the fake venue exited during the run (status {venue.proc.returncode})")
    if rows1 <= rows0:
        raise BenchError("the agent committed nothing in the measurement window")
    return AgentPhase(
        rows1 - rows0, cpu1.wall - cpu0.wall, latencies, _cpu_percent(cpu0, cpu1), (rss0, rss1)
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (q in 0..100)."""
    if not sorted_values:
        raise BenchError("no latency samples were taken")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


# -- reference A: bare WebSocket receive -------------------------------------------------------


@attrs.define
class ReceiveReference:
    frames: int
    events: int
    seconds: float
    captured: list[Captured]  # (frame, receive time ns) for reference B

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


async def run_receive_reference(
    provider: str, venue: Venue, symbols: Sequence[str], duration_s: float
) -> ReceiveReference:
    """One connection, nothing but ``get_message()`` in a loop."""
    profile = kit_for(provider).bench
    url = profile.receive_url(venue.ws_url, symbols)
    captured: list[Captured] = []
    capture_events = 0
    frames = events = 0
    count_events, events_in = profile.counts_events, profile.events_in
    async with trio_websocket.open_websocket_url(
        url, message_queue_size=1024, max_message_size=16 << 20
    ) as ws:
        await profile.bare_handshake(ws, venue.api_keys[0], symbols)
        with trio.move_on_after(min(1.0, duration_s / 2)):  # warm-up
            while True:
                await ws.get_message()
        started = time.perf_counter()
        with trio.move_on_after(duration_s):
            while True:
                frame = await ws.get_message()
                frames += 1
                n = events_in(frame) if count_events else 1
                events += n
                if capture_events < REFERENCE_MAX_ROWS:
                    captured.append((str(frame), time.time_ns()))
                    capture_events += n
        seconds = time.perf_counter() - started
    if not frames:
        raise BenchError("reference A received no frames")
    return ReceiveReference(frames, events, seconds, captured)


async def run_lean_receive_reference(
    provider: str, venue: Venue, symbols: Sequence[str], duration_s: float
) -> ReceiveReference:
    """One connection with mdagent's own client (providers/wsclient.py): reads only.

    The agent's streams use this client, so this is the receive cost the agent
    itself pays, without parsing, channels or the database.
    """
    profile = kit_for(provider).bench
    url = profile.receive_url(venue.ws_url, symbols)
    frames = events = 0
    count_events, events_in = profile.counts_events, profile.events_in
    ws = await connect_websocket(url, max_message_bytes=16 << 20)
    try:
        await profile.lean_handshake(ws, venue.api_keys[0], symbols)
        with trio.move_on_after(min(1.0, duration_s / 2)):  # warm-up
            while True:
                await ws.receive_batch()
        started = time.perf_counter()
        with trio.move_on_after(duration_s):
            while True:
                batch = await ws.receive_batch()
                frames += len(batch)
                if count_events:
                    events += sum(map(events_in, batch))
                else:
                    events += len(batch)
        seconds = time.perf_counter() - started
    finally:
        await ws.aclose()
    if not frames:
        raise BenchError("lean receive reference received no frames")
    return ReceiveReference(frames, events, seconds, [])


# -- reference B: bare COPY --------------------------------------------------------------------


@attrs.define
class CopyReference:
    rows: int
    seconds: float
    skipped_events: int
    batch_rows: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def run_copy_reference(
    dsn: str, provider: str, captured: Sequence[Captured], batch_rows: int
) -> CopyReference:
    rows: list[TableRow]
    rows, skipped = kit_for(provider).bench.reference_rows(captured)
    if not rows:
        raise BenchError("reference B has no rows to copy")
    batches = []
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i : i + batch_rows]
        batches.append(
            ([r for t, r in chunk if t == "trades"], [r for t, r in chunk if t == "quotes"])
        )
    days = {r[4].date() for _t, r in rows} | {r[-1].date() for _t, r in rows}
    trades_sql = f"COPY trades ({', '.join(_TRADE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    quotes_sql = f"COPY quotes ({', '.join(_QUOTE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with psycopg.connect(dsn) as conn:
        for table in ("trades", "quotes"):
            for day in days:  # partitions exist up front, as maintenance makes them
                conn.execute("SELECT mdagent_ensure_day_partition(%s::regclass, %s)", (table, day))
        conn.commit()
        started = time.perf_counter()
        for trades, quotes in batches:
            with conn.cursor() as cur:
                for sql, types, data in (
                    (trades_sql, _TRADE_TYPES, trades),
                    (quotes_sql, _QUOTE_TYPES, quotes),
                ):
                    if not data:
                        continue
                    with cur.copy(sql) as copy:
                        copy.set_types(list(types))
                        for row in data:
                            copy.write_row(row)
            conn.commit()
        seconds = time.perf_counter() - started
    return CopyReference(len(rows), seconds, skipped, batch_rows)


# -- the whole run -----------------------------------------------------------------------------


@attrs.define
class Results:
    settings: Settings
    max_phase: AgentPhase
    latency_phase: AgentPhase
    rss_before_mb: float
    peak_rss_mb: float
    receive: ReceiveReference
    lean_receive: ReceiveReference
    copy: CopyReference

    def figures(self) -> dict[str, Any]:
        s = self.settings
        lat = sorted(self.latency_phase.latencies_s)
        committed = self.max_phase.rate
        bare_ws = self.receive.events_per_s
        return {
            "provider": s.provider,
            "cpu_count": os.cpu_count(),
            "symbols": s.symbols,
            "connections": s.connections(),
            "channels": list(s.profile.channels),
            "duration_s": s.duration_s,
            "warmup_s": s.warmup_s,
            "agent_committed_rows_per_s": round(committed, 1),
            "agent_max_rows": self.max_phase.rows,
            "agent_max_cpu_percent": self.max_phase.cpu,
            "agent_max_rss_mb_start_end": [round(v, 1) for v in self.max_phase.rss_mb],
            "latency_rate_target": s.latency_rate,
            "latency_duration_s": s.latency_duration_s,
            "latency_committed_rows_per_s": round(self.latency_phase.rate, 1),
            "latency_samples": len(lat),
            "latency_p50_ms": round(percentile(lat, 50) * 1000, 2),
            "latency_p99_ms": round(percentile(lat, 99) * 1000, 2),
            "latency_max_ms": round(lat[-1] * 1000, 2),
            "latency_cpu_percent": self.latency_phase.cpu,
            "rss_before_mb": round(self.rss_before_mb, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "bare_ws_frames_per_s": round(self.receive.frames_per_s, 1),
            "bare_ws_events_per_s": round(bare_ws, 1),
            "bare_ws_seconds": round(self.receive.seconds, 2),
            "bare_copy_rows_per_s": round(self.copy.rows_per_s, 1),
            "bare_copy_rows": self.copy.rows,
            "bare_copy_batch_rows": self.copy.batch_rows,
            "bare_copy_skipped_events": self.copy.skipped_events,
            "lean_ws_frames_per_s": round(self.lean_receive.frames_per_s, 1),
            "lean_ws_events_per_s": round(self.lean_receive.events_per_s, 1),
            "ratio_committed_to_bare_ws": round(committed / bare_ws, 3),
            "ratio_committed_to_lean_ws": round(committed / self.lean_receive.events_per_s, 3),
            "ratio_committed_to_bare_copy": round(committed / self.copy.rows_per_s, 3),
        }


def collect(settings: Settings) -> Results:
    names = settings.symbol_names()
    n_conn = settings.connections()
    provider = settings.provider
    with database_server(settings.dsn) as server:
        with fresh_database(server, "max") as dsn, fake_venue(provider, names, 0, n_conn) as venue:
            config = agent_config(settings, venue)
            rss_before = (_memory_kb("VmRSS") or 0) / 1024
            max_phase = trio.run(
                run_agent_phase, config, dsn, venue, settings.warmup_s, settings.duration_s
            )
        # The fake paces each connection: split the total rate between them.
        per_conn = settings.latency_rate / n_conn
        with (
            fresh_database(server, "lat") as dsn,
            fake_venue(provider, names, per_conn, n_conn, late_trades=False) as venue,
        ):
            config = agent_config(settings, venue)
            latency_phase = trio.run(
                run_agent_phase,
                config,
                dsn,
                venue,
                min(settings.warmup_s, 2.0),
                settings.latency_duration_s,
            )
        peak = peak_rss_mb()
        with fake_venue(provider, names, 0, 1) as venue:
            receive = trio.run(run_receive_reference, provider, venue, names, settings.reference_s)
        with fake_venue(provider, names, 0, 1) as venue:
            lean_receive = trio.run(
                run_lean_receive_reference, provider, venue, names, settings.reference_s
            )
        with fresh_database(server, "copy") as dsn:
            copy = run_copy_reference(
                dsn, provider, receive.captured, config.database.batch_max_rows
            )
    return Results(
        settings, max_phase, latency_phase, rss_before, peak, receive, lean_receive, copy
    )


def _fmt_cpu(cpu: dict[str, float | None]) -> str:
    def one(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f}%"

    return (
        f"agent {one(cpu['agent_process'])}, venue {one(cpu['venue_process'])}, "
        f"whole machine {one(cpu['machine'])} (100% = one core)"
    )


def format_report(f: dict[str, Any]) -> str:
    profile = kit_for(f["provider"]).bench
    unit = "events" if profile.counts_events else "frames"
    lines = [
        f"mdagent bench: provider {f['provider']}, {f['symbols']} symbols over "
        f"{f['connections']} connection(s), channels {','.join(f['channels'])}",
        f"machine: {f['cpu_count']} cores (os.cpu_count)",
        "",
        f"agent, venue at max rate ({f['duration_s']:g} s after {f['warmup_s']:g} s warm-up):",
        f"  committed rows/s ........... {f['agent_committed_rows_per_s']:,.0f}"
        f"  ({f['agent_max_rows']:,} rows)",
        f"  cpu ........................ {_fmt_cpu(f['agent_max_cpu_percent'])}",
        "  RSS at window start, end ... {:.1f} MB, {:.1f} MB".format(
            *f["agent_max_rss_mb_start_end"]
        ),
        f"agent, venue at {f['latency_rate_target']:,.0f} events/s "
        f"({f['latency_duration_s']:g} s):",
        f"  committed rows/s ........... {f['latency_committed_rows_per_s']:,.0f}",
        f"  event time -> commit ....... p50 {f['latency_p50_ms']:.1f} ms, "
        f"p99 {f['latency_p99_ms']:.1f} ms, max {f['latency_max_ms']:.1f} ms"
        f"  ({f['latency_samples']} sampled trades)",
        f"  cpu ........................ {_fmt_cpu(f['latency_cpu_percent'])}",
        f"peak RSS (agent phases) ...... {f['peak_rss_mb']:.1f} MB"
        f"  (RSS before: {f['rss_before_mb']:.1f} MB)",
        "",
        f"reference A, bare get_message() on one connection ({f['bare_ws_seconds']:g} s):",
        f"  frames/s ................... {f['bare_ws_frames_per_s']:,.0f}",
    ]
    if profile.counts_events:
        lines.append(f"  events/s ................... {f['bare_ws_events_per_s']:,.0f}")
    lines += [
        "reference A2, bare receive with mdagent's own client (providers/wsclient.py), one connection:",
        f"  frames/s ................... {f['lean_ws_frames_per_s']:,.0f}",
    ]
    if profile.counts_events:
        lines.append(f"  events/s ................... {f['lean_ws_events_per_s']:,.0f}")
    lines += [
        f"reference B, bare binary COPY of the same rows ({f['bare_copy_rows']:,} rows, "
        f"{f['bare_copy_batch_rows']} per transaction):",
        f"  rows/s ..................... {f['bare_copy_rows_per_s']:,.0f}",
    ]
    if f["bare_copy_skipped_events"]:
        lines.append(
            f"  ({f['bare_copy_skipped_events']:,} bar/other events not copied: they need an upsert)"
        )
    lines += [
        "",
        "ratios:",
        f"  committed / bare WS {unit}/s .. {f['ratio_committed_to_bare_ws']:.2f}"
        + _target(profile.ws_ratio_target),
        f"  committed / own-client WS {unit}/s .. {f['ratio_committed_to_lean_ws']:.2f}"
        "  (informative: the agent's own reader, one connection)",
        f"  committed / bare COPY rows/s .. {f['ratio_committed_to_bare_copy']:.2f}"
        + _target(profile.copy_ratio_target),
        f"  p99 latency ................... {f['latency_p99_ms']:.1f} ms"
        f"  (target < {TARGET_P99_S * 1000:.0f} ms at {TARGET_P99_AT_RATE:,.0f} events/s)",
        f"  peak RSS ...................... {f['peak_rss_mb']:.1f} MB"
        f"  (target < {TARGET_RSS_MB:.0f} MB)",
        "",
    ]
    missed = missed_targets(f)
    lines += [f"target missed: {m}" for m in missed] or ["all targets met"]
    return "\n".join(lines)


def _target(value: float | None) -> str:
    return f"  (target >= {value})" if value is not None else ""


def missed_targets(f: dict[str, Any]) -> list[str]:
    profile = kit_for(f["provider"]).bench
    missed = []
    ws_target = profile.ws_ratio_target
    if ws_target is not None and f["ratio_committed_to_bare_ws"] < ws_target:
        missed.append(f"committed / bare WS = {f['ratio_committed_to_bare_ws']:.2f} < {ws_target}")
    copy_target = profile.copy_ratio_target
    if copy_target is not None and f["ratio_committed_to_bare_copy"] < copy_target:
        missed.append(
            f"committed / bare COPY = {f['ratio_committed_to_bare_copy']:.2f} < {copy_target}"
        )
    if (
        f["latency_rate_target"] == TARGET_P99_AT_RATE
        and f["latency_p99_ms"] >= TARGET_P99_S * 1000
    ):
        missed.append(f"p99 latency {f['latency_p99_ms']:.1f} ms >= {TARGET_P99_S * 1000:.0f} ms")
    if f["peak_rss_mb"] >= TARGET_RSS_MB:
        missed.append(f"peak RSS {f['peak_rss_mb']:.1f} MB >= {TARGET_RSS_MB:.0f} MB")
    return missed


def run_bench(args: argparse.Namespace) -> int:
    """The ``mdagent bench`` command: print the figures; 1 only if something failed to run."""
    from mdagent.logs import configure_logging

    configure_logging("warning", "console")
    try:
        settings = Settings.from_args(args)
        figures = collect(settings).figures()
    except BenchError as exc:
        print(f"mdagent bench: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # report any failure to run as exit 1, with its cause
        print(f"mdagent bench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if getattr(args, "json", False):
        print(json.dumps(figures))
    else:
        print(format_report(figures))
    sys.stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mdagent.bench [--json] ...``: the same options as ``mdagent bench``."""
    parser = argparse.ArgumentParser(prog="python -m mdagent.bench")
    from mdagent.providers.registry import provider_names

    providers = provider_names()
    parser.add_argument("--provider", choices=providers, default=providers[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--latency-rate", type=float, default=5000.0)
    parser.add_argument("--latency-duration", type=float, default=10.0)
    parser.add_argument("--dsn", default="embedded")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
