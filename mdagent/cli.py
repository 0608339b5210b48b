"""The ``mdagent`` console script.

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure.
``mdagent --config F`` is ``mdagent run --config F``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from mdagent import __version__, interrupts
from mdagent.config import Config, config_to_display, load_config
from mdagent.errors import ConfigError, DatabaseUnavailable, MdagentError
from mdagent.logs import configure_logging

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2

Command = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, like every other error (README): the usage block is --help's.
        print(f"mdagent: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free port) to 65535, never wrapped."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, got {port}")
    return port


def _number(
    low: float, high: float = math.inf, *, low_open: bool = False
) -> Callable[[str], float]:
    """A finite number for argparse within [low, high] (or (low, high])."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            bound = f"> {_shown(low)}" if low_open else f">= {_shown(low)}"
            if high != math.inf:
                bound += f" and <= {_shown(high)}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


# mdagent bench: a phase stores everything it receives (tens of thousands of
# rows a second here), so 10 minutes already makes millions of rows and GBs of
# disk; a soak is meant to be long, but at most a day. Larger: a typo, not a run
# of hours. Paced rates above BENCH_RATE_MAX are the max-rate phase anyway.
BENCH_PHASE_MAX_S = 600.0
BENCH_SOAK_MAX_S = 86_400.0
BENCH_RATE_MAX = 1_000_000.0


def _dsn(text: str) -> str:
    """A database for argparse: "embedded" or a DSN libpq parses (the problem redacted)."""
    from mdagent.db.dsn import dsn_problem

    problem = dsn_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _shown(number: float) -> str:
    """``1,000,000`` for a whole number, ``0.5`` otherwise."""
    return f"{int(number):,}" if number == int(number) else f"{number:g}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# A replayed tape's events are held in the venue (~700 bytes each).
_REPLAY_MAX_EVENTS = 1_000_000


def _replay_events(text: str) -> int:
    """``fake-venue --replay``: 0 (off) or 1,000 .. 1,000,000 events."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value != 0 and not 1_000 <= value <= _REPLAY_MAX_EVENTS:
        raise argparse.ArgumentTypeError(
            f"must be 0 (off) or 1000 .. {_REPLAY_MAX_EVENTS:,}, got {value}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    from mdagent.providers.registry import provider_names

    providers = provider_names()
    parser = _Parser(prog="mdagent", description="Market data ingestion agent.")
    parser.add_argument("--version", action="version", version=f"mdagent {__version__}")
    parser.add_argument(
        "--config", "-c", help="path to config.toml (runs the agent when no command is given)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_: str, *, short: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        flags = ("--config", "-c") if short else ("--config",)
        p.add_argument(*flags, default=argparse.SUPPRESS, help="path to config.toml")
        return p

    add("run", "run the agent (the default command)")
    add("migrate", "apply pending database migrations and exit")
    add("check-config", "validate the config and print it with secrets redacted")
    p = add("status", "show streams, stored data, gaps, the backfill queue and dead letters")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    # -c is psql's own flag for SQL here, as in psql itself.
    p = add(
        "psql", "a psql shell (or -c SQL) on the configured database, embedded or not", short=False
    )
    p.add_argument(
        "-c",
        "--command",
        dest="sql",
        action="append",
        help="run this SQL and exit (repeatable, run in order, as in psql)",
    )
    p = add("dsn", "print the configured database's libpq DSN (password masked)")
    p.add_argument("--show-password", action="store_true", help="print the password too")
    p = add("backfill", "backfill a range of history over REST (resumable)")
    p.add_argument("--provider", required=True, help="binance | polygon")
    p.add_argument("--symbol", required=True, help="e.g. BTCUSDT, AAPL")
    p.add_argument(
        "--kind",
        required=True,
        help="trades | aggtrades | quotes | klines_<interval> (klines_1m, ...)",
    )
    p.add_argument("--from", dest="from_", required=True, help="start, UTC: YYYY-MM-DD or ISO time")
    p.add_argument("--to", required=True, help="end (exclusive), UTC: YYYY-MM-DD or ISO time")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost")
    p.add_argument("--workers", type=int, default=4, help="concurrent jobs, 1 to 16 (default 4)")
    p.add_argument(
        "--chunk-hours",
        type=float,
        default=None,
        help="job length, at least 1 minute (default: 1 h; klines 1000 bars); at most 1,000,000 jobs a run",
    )

    p = sub.add_parser("fake-venue", help="serve a built-in fake venue on loopback")
    p.add_argument("provider", choices=providers)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=0, help="WebSocket port (0 = any free port)")
    p.add_argument("--rest-port", type=_port, default=0, help="REST port (0 = any free port)")
    p.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="comma-separated symbols")
    p.add_argument(
        "--rate",
        type=_number(0),
        default=100.0,
        help="pace per connection, events per second (Polygon: of the whole market tape; 0 = max)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--api-key", default="test-key", help="venues with API keys: the accepted key")
    p.add_argument(
        "--extra-api-keys",
        default="",
        help="venues with API keys: more accepted keys, comma-separated (one connection per key)",
    )
    p.add_argument(
        "--no-record-sent",
        action="store_true",
        help="keep no ground truth of sent events (for long or fast runs; venues that support it)",
    )
    p.add_argument(
        "--late-trade-ratio",
        type=_number(0, 1),
        default=0.02,
        help="share of trades reported late, with an older event time (venues that support it)",
    )
    p.add_argument(
        "--replay",
        type=_replay_events,
        default=0,
        metavar="EVENTS",
        help="play a tape of EVENTS generated events in a loop, shifted in time each pass: "
        "far less venue CPU, for max-rate runs (needs --no-record-sent; venues that support it)",
    )

    p = sub.add_parser("bench", help="measure throughput, latency and memory against a fake venue")
    p.add_argument("--provider", choices=providers, default=providers[0])
    p.add_argument(
        "--symbols",
        type=_positive_int,
        default=20,
        help="number of symbols (at most: binance 150, one URL of the bare reference; others 1,000)",
    )
    p.add_argument(
        "--duration",
        type=_number(0, BENCH_PHASE_MAX_S, low_open=True),
        default=20.0,
        help="seconds of the max-rate phase (at most 600)",
    )
    p.add_argument(
        "--latency-rate",
        type=_number(0, BENCH_RATE_MAX, low_open=True),
        default=None,
        help="events/s of the fixed-rate phase (default: the provider's target, "
        "binance 40000, polygon 5000)",
    )
    p.add_argument(
        "--latency-duration",
        type=_number(0, BENCH_PHASE_MAX_S, low_open=True),
        default=None,
        help="seconds of the fixed-rate phase (default: binance 30, polygon 10)",
    )
    p.add_argument(
        "--dsn", type=_dsn, default="embedded", help="database (default: a fresh embedded server)"
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument(
        "--soak",
        type=_number(0, BENCH_SOAK_MAX_S, low_open=True),
        default=None,
        metavar="S",
        help="instead: hold the venue at the paced rate for S seconds and report whether "
        "the agent's RSS stays flat (sampled every 5 s)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes ([agent] workers) of the agent phases; with N > 1 the "
        "max-rate phase also runs with 1 .. N-1 (the scaling table)",
    )
    p.add_argument(
        "--backfill",
        action="store_true",
        help="instead: a one-day trades backfill against the fake (weights off and on)",
    )
    return parser


# Commands that may start the embedded server: a stop signal must not leave it behind.
_GUARDED = {"run", "migrate", "status", "psql", "dsn", "backfill"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    handler = _COMMANDS[command]
    if command in _GUARDED:
        interrupts.install()
    if command != "run":
        # Commands print their results on stdout (status --json, dsn): the
        # embedded server's progress lines stay off it, warnings go to stderr.
        configure_logging("warning", "console")
    try:
        return _run_command(command, handler, args)
    finally:
        if command in _GUARDED:
            interrupts.exiting()


def _run_command(command: str, handler: Command, args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except interrupts.Interrupted as exc:
        print(f"mdagent: {command}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnavailable as exc:
        print(f"mdagent: database unavailable: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except MdagentError as exc:
        print(f"mdagent: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def _config(args: argparse.Namespace, *, secrets: bool = True) -> Config:
    path = getattr(args, "config", None)
    if not path:
        raise ConfigError(["--config is required (e.g. mdagent --config config.toml)"])
    return load_config(path, secrets=secrets)


def _database_config(args: argparse.Namespace) -> Config:
    """The config for a command that only uses the database (migrate, status,
    psql, dsn): the streams' secrets (``api_key_env``) need not be set, as in
    an operator's shell on the VM, where only the service has them."""
    return _config(args, secrets=False)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from mdagent.providers.registry import provider_for

    config = _config(args)
    display = config_to_display(config)
    # The connection plan: what each source will open (Binance spreads
    # streams over several URLs within 1,024 streams / 8,000 characters each).
    for shown, source in zip(display["sources"], config.sources, strict=True):
        urls = provider_for(source.provider).stream.connection_urls(source)
        shown["connections"] = [{"url_chars": len(url), "url": url} for url in urls]
    print(json.dumps(display, indent=2, ensure_ascii=False))
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    from mdagent.db.embedded import database_dsn
    from mdagent.db.migrate import migrate

    config = _database_config(args)
    db = config.database
    with database_dsn(db.dsn, db.data_dir, db.embedded) as dsn:
        applied = migrate(dsn)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    # A stop signal while the agent's modules load, its config is read or its
    # logging is set up is a stop during start-up like one during the
    # server's start: nothing was started, so it is a clean stop (exit 0), not
    # a failure for systemd. (run_agent_main handles the later ones itself.)
    try:
        from mdagent.pipeline.agent import run_agent_main

        config = _config(args)
        return run_agent_main(config, config_path=args.config)
    except interrupts.Interrupted as exc:
        print(f"mdagent: run: stopped by {exc.signal.name} during start-up", file=sys.stderr)
        return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from mdagent.status_view import print_status

    config = _database_config(args)
    return print_status(config, as_json=args.json)


def _cmd_psql(args: argparse.Namespace) -> int:
    from mdagent.psql import run_psql

    return run_psql(_database_config(args), args.sql)


def _cmd_dsn(args: argparse.Namespace) -> int:
    from mdagent.psql import describe_dsn

    dsn, note = describe_dsn(_database_config(args), show_password=args.show_password)
    print(dsn)
    if note:
        print(f"mdagent: {note}", file=sys.stderr)
    return EXIT_OK


def _cmd_backfill(args: argparse.Namespace) -> int:
    from mdagent.backfill.command import MAX_WORKERS, BackfillArgs, run_backfill
    from mdagent.backfill.plan import PlanError

    config = _config(args)
    if not 1 <= args.workers <= MAX_WORKERS:
        print(f"mdagent: error: --workers must be 1 to {MAX_WORKERS}", file=sys.stderr)
        return EXIT_USAGE
    request = BackfillArgs(
        provider=args.provider,
        symbol=args.symbol,
        kind=args.kind,
        from_text=args.from_,
        to_text=args.to,
        dry_run=args.dry_run,
        workers=args.workers,
        chunk_hours=args.chunk_hours,
    )
    try:
        return run_backfill(config, request)
    except PlanError as exc:
        print(f"mdagent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _cmd_fake_venue(args: argparse.Namespace) -> int:
    from mdagent.testing.cli import run_fake_venue

    return run_fake_venue(args)


def _term_as_ctrl_c(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM handled as a Ctrl-C: inside trio.run, trio's own SIGINT handler
    delivers it at a safe point; outside, Python's raises KeyboardInterrupt."""
    signal.raise_signal(signal.SIGINT)


def _cmd_bench(args: argparse.Namespace) -> int:
    # The bench's child processes (the fake venue, its embedded PostgreSQL,
    # worker processes) are stopped by its finally blocks, which Python's
    # default SIGTERM skipped: a killed bench left the server and the venue
    # running. A SIGTERM now unwinds like Ctrl-C (exit 1).
    signal.signal(signal.SIGTERM, _term_as_ctrl_c)
    if args.backfill:
        from mdagent.bench_backfill import run_backfill_bench

        return run_backfill_bench(args)
    from mdagent.bench import run_bench

    return run_bench(args)


_COMMANDS: dict[str, Command] = {
    "run": _cmd_run,
    "migrate": _cmd_migrate,
    "check-config": _cmd_check_config,
    "status": _cmd_status,
    "psql": _cmd_psql,
    "dsn": _cmd_dsn,
    "backfill": _cmd_backfill,
    "fake-venue": _cmd_fake_venue,
    "bench": _cmd_bench,
}
