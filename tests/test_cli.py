"""The console script: exit codes 0 ok, 2 usage/config error, 1 runtime failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_python(
    script: str, *, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -c script`` with this checkout importable; output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=cwd,
    )


def mdagent(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mdagent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=cwd,
    )


def test_version() -> None:
    result = mdagent("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("mdagent ")


def test_check_config_ok() -> None:
    result = mdagent("check-config", "--config", str(REPO / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert '"provider": "binance"' in result.stdout


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[database]
batch_max_rows = -1
[[sources]]
provider = "bnance"
symbols = ["X"]
channels = ["trade"]
[[sources]]
provider = "binance"
symbols = ["BTCUSDT"]
channels = ["trdae"]
tyop = 1
[[sources]]
name = "poly"
provider = "polygon"
symbols = ["AAPL"]
channels = ["T"]
api_key_env = "MDAGENT_TEST_SURELY_UNSET"
"""
    )
    result = mdagent("check-config", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "config error: database.batch_max_rows: must be > 0, got -1" in lines
    assert any("sources[0].provider: invalid value 'bnance'" in line for line in lines)
    assert "config error: sources[1].tyop: unknown key" in lines


def test_check_config_semantic_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trdae"]\n'
        '[[sources]]\nname = "poly"\nprovider = "polygon"\nsymbols = ["AAPL"]\nchannels = ["T"]\n'
        'api_key_env = "MDAGENT_TEST_SURELY_UNSET"\n'
    )
    result = mdagent("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: sources[0].channels[0]: unknown channel 'trdae' for provider binance",
        "config error: sources[1].api_key_env: environment variable MDAGENT_TEST_SURELY_UNSET is not set",
    ]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert mdagent("no-such-command").returncode == 2
    assert mdagent("check-config").returncode == 2
    assert mdagent("check-config", "--config", str(tmp_path / "missing.toml")).returncode == 2


def test_migrate_command_against_dsn(pg_server_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS cli_migrate")
        conn.execute("CREATE DATABASE cli_migrate")
    dsn = psycopg.conninfo.make_conninfo(pg_server_dsn, dbname="cli_migrate")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[database]\ndsn = "{dsn}"\n[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trade"]\n'
    )
    first = mdagent("migrate", "--config", str(cfg))
    assert first.returncode == 0, first.stderr
    assert "001_init.sql" in first.stdout
    second = mdagent("migrate", "--config", str(cfg))
    assert second.returncode == 0 and "none pending" in second.stdout
    status = mdagent("status", "--config", str(cfg))
    assert status.returncode == 0, status.stderr
    assert "backfill queue" in status.stdout


def test_migrate_unreachable_database_exits_1(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[database]\ndsn = "postgresql://nobody:pw@127.0.0.1:1/none?connect_timeout=2"\n'
        '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trade"]\n'
    )
    result = mdagent("migrate", "--config", str(cfg))
    assert result.returncode == 1
    assert "database unavailable" in result.stderr
    assert "pw@" not in result.stderr


@pytest.mark.slow
def test_migrate_embedded_from_config(tmp_path: Path) -> None:
    """The README quick start: the embedded server under data_dir gets every table."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[database]\ndata_dir = "{tmp_path / "data"}"\n'
        '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trade"]\n'
    )
    result = mdagent("migrate", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "pgdata").is_dir()


def test_sigterm_while_run_reads_its_config_is_a_clean_stop(tmp_path: Path) -> None:
    """systemd stopping the agent before it got past its config is a stop, not a failure.

    A real SIGTERM is delivered while `mdagent run` is inside load_config (the
    window between the signal guard's install and the agent's own start-up
    handling, where it used to exit 1).
    """
    script = (
        "import os, signal, sys, time\n"
        "import mdagent.cli as cli\n"
        "def load(path, *, secrets=True):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "    raise AssertionError('the signal did not interrupt the config load')\n"
        "cli.load_config = load\n"
        "sys.exit(cli.main(['run', '--config', 'unused.toml']))\n"
    )
    result = run_python(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "mdagent: run: stopped by SIGTERM during start-up"


def test_sigterm_while_run_sets_up_logging_is_a_clean_stop(tmp_path: Path) -> None:
    """The next window: config read, logging being set up, no server yet (found by
    the start-up SIGTERM test on a loaded machine, where it exited 1)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trade"]\n'
    )
    script = (
        "import os, signal, sys, time\n"
        "import mdagent.cli as cli\n"
        "import mdagent.pipeline.agent as agent\n"
        "def setup(*args):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "    raise AssertionError('the signal did not interrupt the logging set-up')\n"
        "agent.configure_logging = setup\n"
        f"sys.exit(cli.main(['run', '--config', {str(cfg)!r}]))\n"
    )
    result = run_python(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "mdagent: run: stopped by SIGTERM during start-up"
