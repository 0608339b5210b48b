"""Errors a user meets: one line each, naming the problem, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg import conninfo

from tests.test_cli import REPO, mdagent

SOURCE = '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trade"]\n'


def test_check_config_reports_every_layer_at_once(tmp_path: Path) -> None:
    """Field values, the DSN, http.listen, an unknown key and channels: all in one run."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[database]\nbatch_max_rows = 0\nbatch_max_delay_s = -1\ndsn = "mysql://x"\n'
        '[http]\nlisten = "nonsense"\n'
        '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trdae"]\ntyop = 1\n'
    )
    result = mdagent("check-config", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert all(line.startswith("config error: ") for line in lines), lines
    text = "\n".join(lines)
    for expected in (
        "database.batch_max_rows: must be > 0, got 0",
        "database.batch_max_delay_s: must be > 0, got -1",
        "database.dsn: not a PostgreSQL connection string",
        "http.listen: expected 'host:port', got 'nonsense'",
        "sources[0].tyop: unknown key",
        "sources[0].channels[0]: unknown channel 'trdae' for provider binance",
    ):
        assert expected in text, (expected, lines)
    assert len(lines) == 6, lines


@pytest.mark.parametrize("command", ["check-config", "migrate", "status", "run"])
def test_non_postgres_dsn_is_a_config_error(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\ndsn = "mysql://x"\n{SOURCE}')
    result = mdagent(command, "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: database.dsn: "), lines


def test_quoted_keyword_password_never_shown(tmp_path: Path) -> None:
    dsn = "host=127.0.0.1 port=1 user=u password='my secret pw' dbname=x connect_timeout=2"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\ndsn = "{dsn}"\n{SOURCE}')
    shown = mdagent("check-config", "--config", str(cfg))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["database"]["dsn"].count("***") == 1
    for command in ("check-config", "migrate", "status"):
        result = mdagent(command, "--config", str(cfg))
        out = result.stdout + result.stderr
        assert "secret" not in out and " pw'" not in out, (command, out)
    failed = mdagent("migrate", "--config", str(cfg))
    assert failed.returncode == 1
    assert "password=***" in failed.stderr


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    cfg = etc / "config.toml"
    cfg.write_text(f'[database]\ndata_dir = "./mdagent-data"\n{SOURCE}ca_file = "ca.pem"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    missing = mdagent("check-config", "--config", str(cfg), cwd=elsewhere)
    assert missing.returncode == 2
    assert (
        missing.stderr.strip() == f"config error: sources[0].ca_file: cannot read {etc / 'ca.pem'}"
    )
    (etc / "ca.pem").write_text("")
    result = mdagent("check-config", "--config", str(cfg), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["database"]["data_dir"] == str(etc / "mdagent-data")
    assert shown["sources"][0]["ca_file"] == str(etc / "ca.pem")


def test_status_without_schema(empty_db_dsn: str, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\ndsn = "{empty_db_dsn}"\n{SOURCE}')
    result = mdagent("status", "--config", str(cfg))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "mdagent: no mdagent schema in this database; run `mdagent migrate`"
    ]


def test_http_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[database]\ndsn = "host=/nonexistent dbname=x"\n'
            f'[http]\nlisten = "127.0.0.1:{port}"\n{SOURCE}'
        )
        result = mdagent("run", "--config", str(cfg))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mdagent: http.listen 127.0.0.1:{port}: address already in use"
    ]


def test_fake_venue_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mdagent("fake-venue", "binance", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mdagent: fake-venue --port 127.0.0.1:{port}: address already in use"
    ]


def test_psql_secrets_never_reach_its_command_line(db_dsn: str, tmp_path: Path) -> None:
    """``mdagent psql`` put ``sslpassword`` in psql's arguments, which any user
    sees in ``ps``. psql shows its own arguments here (``\\!`` runs a shell
    whose parent is psql): no secret; the password is in PGPASSWORD, the
    passphrase in a service file only we can read, gone after psql ends."""
    dsn = conninfo.make_conninfo(
        db_dsn, password="hunter2-pw", sslpassword="s3cret-passphrase", sslmode="disable"
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\ndsn = "{dsn}"\n{SOURCE}')
    result = mdagent(
        "psql", "--config", str(cfg),
        "-c", "select 'connected' as state",
        "-c", "\\! tr '\\0' ' ' < /proc/$PPID/cmdline; echo",
        "-c", '\\! echo "pw=$PGPASSWORD"; stat -c "mode=%a" "$PGSERVICEFILE"; cat "$PGSERVICEFILE"',
        "-c", '\\! echo "file=$PGSERVICEFILE"',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    argv = next(line for line in out.splitlines() if "/psql " in line)
    assert "connected" in out and "service=mdagent-psql" in argv, out
    assert "hunter2" not in argv and "s3cret" not in argv, argv
    assert "pw=hunter2-pw" in out and "mode=600" in out and "sslpassword=s3cret-passphrase" in out
    shown = next(line for line in out.splitlines() if line.startswith("file="))
    service_file = Path(shown.removeprefix("file="))
    assert service_file.name == "pg_service.conf"
    assert not service_file.exists() and not service_file.parent.exists()


def test_psql_sslpassword_that_cannot_be_hidden_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    dsn = "host=/nonexistent dbname=x service=corp sslpassword=s3cret"
    cfg.write_text(f'[database]\ndsn = "{dsn}"\n{SOURCE}')
    result = mdagent("psql", "--config", str(cfg), "-c", "select 1")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "mdagent: psql: sslpassword and service=corp together: put sslpassword in that"
        " service's entry (on the command line, ps would show it)"
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # 99999 used to be bound as 99999 - 65536 = 34463 without a word.
        (["fake-venue", "binance", "--port", "99999"], "--port: port must be 0 to 65535"),
        (["fake-venue", "binance", "--rest-port", "70000"], "--rest-port: port must be 0 to 65535"),
        # -1 and a negative rate were tracebacks.
        (["fake-venue", "binance", "--port", "-1"], "--port: port must be 0 to 65535"),
        (["fake-venue", "polygon", "--rate", "-5"], "--rate: must be >= 0"),
        (["fake-venue", "binance", "--rate", "nan"], "--rate: must be >= 0"),
        (["fake-venue", "binance", "--port", "abc"], "--port: expected a port number"),
        (["bench", "--duration", "-1"], "--duration: must be > 0"),
        (["bench", "--symbols", "0"], "--symbols: must be >= 1"),
        # Accepted before: a run of 30 years, a paced phase at nan events/s, a
        # soak of 30 years; a non-finite rate on python -m mdagent.bench too.
        (["bench", "--duration", "1e9"], "--duration: must be > 0 and <= 600, got 1e9"),
        (["bench", "--latency-duration", "1e6"], "--latency-duration: must be > 0 and <= 600"),
        (["bench", "--latency-rate", "nan"], "--latency-rate: must be > 0 and <= 1,000,000"),
        (["bench", "--latency-rate", "0"], "--latency-rate: must be > 0 and <= 1,000,000"),
        (["bench", "--soak", "1e9"], "--soak: must be > 0 and <= 86,400, got 1e9"),
        (["bench", "--workers", "-2"], "--workers: must be >= 1"),
        # Was "mdagent bench: failed: cannot create a database on ...", exit 1.
        (["bench", "--dsn", "mysql://x"], "--dsn: not a PostgreSQL connection string"),
    ],
)
def test_bad_numbers_on_the_command_line_are_usage_errors(args: list[str], expected: str) -> None:
    result = mdagent(*args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # one line, no usage block (README: errors are one line)
    assert lines[0].startswith("mdagent: error: argument ") and expected in lines[0], lines
    assert lines[0].endswith(f"(see mdagent {args[0]} --help)"), lines


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:hunter2@[::1:5432/db",  # libpq quoted the whole URI
        'host=/nonexistent password="sec hunter2" dbname=x',  # ... or the password's tail
    ],
)
def test_unparseable_dsn_never_echoes_the_password(tmp_path: Path, dsn: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[database]\ndsn = '{dsn}'\n{SOURCE}")
    for command in ("check-config", "migrate", "status", "run"):
        result = mdagent(command, "--config", str(cfg))
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "not a PostgreSQL connection string" in lines[0], lines
        assert "hunter2" not in result.stdout + result.stderr, (command, lines)
    bench = mdagent("bench", "--dsn", dsn)
    assert bench.returncode == 2  # a usage error since --dsn is parsed up front
    assert "hunter2" not in bench.stdout + bench.stderr, bench.stderr


def test_database_commands_do_not_need_the_streams_secrets(
    unmigrated_db_dsn: str, tmp_path: Path
) -> None:
    """An operator's shell has no EnvironmentFile: migrate/status/psql/dsn still work.

    They refused with "environment variable ... is not set" although they never
    open a stream, so README's backup recipe (``mdagent dsn --config
    /etc/mdagent/config.toml``) failed on any VM with a Polygon source.
    ``run`` and ``check-config`` still require the variable.
    """
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[database]\ndsn = "{unmigrated_db_dsn}"\n'
        '[[sources]]\nprovider = "polygon"\nsymbols = ["AAPL"]\nchannels = ["T"]\n'
        'api_key_env = "MDAGENT_TEST_UNSET_KEY"\n'
    )
    env = {"MDAGENT_TEST_UNSET_KEY": ""}
    migrated = mdagent("migrate", "--config", str(cfg), env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied ")
    status = mdagent("status", "--config", str(cfg), "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert "offsets" in json.loads(status.stdout)
    psql = mdagent("psql", "--config", str(cfg), "-c", "select count(*) from trades", env=env)
    assert psql.returncode == 0, psql.stderr
    assert " 0\n" in psql.stdout
    dsn = mdagent("dsn", "--config", str(cfg), env=env)
    assert dsn.returncode == 0, dsn.stderr
    for command in ("check-config", "run"):
        refused = mdagent(command, "--config", str(cfg), env=env)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            "config error: sources[0].api_key_env: environment variable"
            " MDAGENT_TEST_UNSET_KEY is not set"
        ]


def test_empty_data_dir_is_a_config_error(tmp_path: Path) -> None:
    """``data_dir = ""`` put the embedded cluster in the current directory, so
    each working directory got its own (empty) cluster."""
    etc = tmp_path / "etc"
    etc.mkdir()
    cfg = etc / "c.toml"
    cfg.write_text(f'[database]\ndata_dir = ""\n{SOURCE}')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in ("check-config", "migrate"):
        result = mdagent(command, "--config", str(cfg), cwd=elsewhere)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.strip().splitlines() == [
            'config error: database.data_dir: must not be empty (e.g. "./mdagent-data")'
        ]
    assert list(elsewhere.iterdir()) == []


def test_data_dir_that_cannot_be_a_directory_is_one_line(tmp_path: Path) -> None:
    """A data_dir naming a file (or under one) was a FileExistsError /
    NotADirectoryError traceback from every database command."""
    taken = tmp_path / "a-file"
    taken.write_text("not a directory\n")
    for data_dir, why in ((taken, "is a file, not a directory"), (taken / "b", "Not a directory")):
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[database]\ndata_dir = "{data_dir}"\n{SOURCE}')
        for command in ("migrate", "status", "run"):
            result = mdagent(command, "--config", str(cfg))
            assert result.returncode == 1, (command, result.stderr)
            assert "Traceback" not in result.stderr, (command, result.stderr)
            assert result.stderr.strip().splitlines() == [
                f"mdagent: database unavailable: database.data_dir {data_dir}: {why}"
            ], (command, result.stderr)
    assert taken.read_text() == "not a directory\n"


def test_psql_runs_every_command_in_order(db_dsn: str, tmp_path: Path) -> None:
    """``-c A -c B`` ran only B (argparse kept the last); psql itself runs both."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\ndsn = "{db_dsn}"\n{SOURCE}')
    result = mdagent(
        "psql", "--config", str(cfg), "-c", "select 'first' as a", "-c", "select 'second' as b"
    )
    assert result.returncode == 0, result.stderr
    assert "first" in result.stdout and "second" in result.stdout, result.stdout
    assert result.stdout.index("first") < result.stdout.index("second")
    failed = mdagent("psql", "--config", str(cfg), "-c", "select nope", "-c", "select 'after'")
    assert failed.returncode != 0
    assert "after" not in failed.stdout  # ON_ERROR_STOP: nothing runs after a failure


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--bogus"], "mdagent: error: unrecognized arguments: --bogus (see mdagent --help)"),
        (["--config"], "mdagent: error: argument --config/-c: expected one argument"),
        (["no-such-command"], "mdagent: error: argument COMMAND: invalid choice"),
        (
            ["status", "--config", "c.toml", "--jsn"],
            "mdagent: error: unrecognized arguments: --jsn",
        ),
    ],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    result = mdagent(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_value_that_would_hammer_the_venue_is_refused(tmp_path: Path, command: str) -> None:
    """``max_connection_age_s = 1e-9`` passed and the agent opened a new
    connection every second (Binance allows 300 per 5 min per IP); now
    check-config and start refuse it in one line, exit 2 (SIGHUP reload:
    test_agent_process)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[agent]\nsummary_interval_s = 5e-324\n{SOURCE}max_connection_age_s = 1e-9\n")
    result = mdagent(command, "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "config error: agent.summary_interval_s: must be 1 to 86,400 s (one log line each"
        " time), got 5e-324",
        "config error: sources[0].max_connection_age_s: must be 60 to 604,800 s (a new"
        " connection each time; Binance allows 300 per 5 min per IP), got 1e-09",
    ]


@pytest.mark.parametrize("command", ["check-config", "run", "status"])
def test_a_config_path_that_is_no_file_is_refused_at_once(tmp_path: Path, command: str) -> None:
    """``--config`` naming a FIFO blocked in open() until a writer came (for
    ever, also at a SIGHUP reload); ``/dev/zero`` read for ever while memory
    grew. Both are one line now, exit 2, before anything is read."""
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO (named pipe)"), ("/dev/zero", "a character device")):
        result = mdagent(command, "--config", str(path))  # a hang: TimeoutExpired
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"config error: {path}: cannot read config file: it is {kind}, not a regular file"
        ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # Was "failed: OSError: [Errno 7] Argument list too long", exit 1 (the
        # fake venue's command line); 200 Binance symbols failed later, on the
        # bare reference's URL the venue refuses (414).
        (["--symbols", "100000"], "--symbols must be 1 to 150 for binance, got 100000"),
        (["--provider", "polygon", "--symbols", "1001"], "--symbols must be 1 to 1,000"),
        (["--workers", "100000"], "--workers must be 1 to "),
    ],
)
def test_bench_options_out_of_range_for_the_provider_are_usage_errors(
    args: list[str], expected: str
) -> None:
    bench = mdagent("bench", *args)
    # python -m mdagent.bench: the same options and checks.
    module = subprocess.run(
        [sys.executable, "-m", "mdagent.bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    for result in (bench, module):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mdagent: error: {expected}"), lines
        assert lines[0].endswith("(see mdagent bench --help)"), lines


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["binance", "--symbols", ""], "--symbols: at least one symbol is required"),
        (["binance", "--symbols", "BTC/USDT"], "--symbols: invalid symbol 'BTC/USDT' for binance"),
        (["binance", "--symbols", "BTCUSDT,btcusdt"], "--symbols: duplicate symbols"),
        (["polygon", "--api-key", ""], "--api-key / --extra-api-keys: a key is empty"),
    ],
)
def test_fake_venue_symbols_no_config_can_name_are_refused(args: list[str], expected: str) -> None:
    """The fake served '' or 'BTC/USDT' (streams no config can name) until
    stopped; now exit 2 with one line before anything listens."""
    result = mdagent("fake-venue", *args, "--port", "0", "--rest-port", "0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mdagent: error: {expected}"), lines
    assert result.stdout == ""
