"""The zipapp as it is deployed: built from the runtime lock, run with nothing else.

``just zipapp`` installs exactly ``requirements/runtime.lock`` into the
zipapp; here it runs under ``env -i`` on the base interpreter with ``-I -S``
(no environment, no site-packages but its own), so a dependency missing
from the lock, or one only the venv provides, fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from mdagent.db.migrate import available_migrations
from tests.test_agent_process import count, get, poll
from tests.test_cli import REPO
from tests.test_shards_process import parent_http_port

PYZ = REPO / "dist" / "mdagent.pyz"


def run_pyz(*args: str, shiv_root: Path) -> subprocess.CompletedProcess[str]:
    python = getattr(sys, "_base_executable", sys.executable)
    return subprocess.run(
        ["env", "-i", f"SHIV_ROOT={shiv_root}", python, "-I", "-S", str(PYZ), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=shiv_root,
    )


@pytest.mark.slow
def test_zipapp_version_check_config_migrate(unmigrated_db_dsn: str, tmp_path: Path) -> None:
    just = shutil.which("just") or str(Path(sys.executable).parent / "just")
    built = subprocess.run(
        [just, "zipapp"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert PYZ.is_file()

    version = run_pyz("--version", shiv_root=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("mdagent ")

    dsn = unmigrated_db_dsn
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[database]\ndsn = "{dsn}"\n'
        '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trade"]\n'
    )
    checked = run_pyz("check-config", "--config", str(cfg), shiv_root=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert '"provider": "binance"' in checked.stdout

    migrated = run_pyz("migrate", "--config", str(cfg), shiv_root=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "001_init.sql" in migrated.stdout
    with psycopg.connect(dsn) as conn:
        applied = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert applied == (len(available_migrations()),)

    # Worker processes start from the zipapp too (isolated interpreter, no
    # environment): the agent with two of them records, then stops cleanly.
    venue = subprocess.Popen(
        [sys.executable, "-m", "mdagent", "fake-venue", "binance", "--symbols",
         "BTCUSDT,ETHUSDT", "--rate", "200"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert venue.stdout is not None
        ws_url = json.loads(venue.stdout.readline())["ws_url"]
        cfg.write_text(
            f'[agent]\nworkers = 2\n[database]\ndsn = "{dsn}"\nbatch_max_delay_s = 0.05\n'
            '[http]\nlisten = "127.0.0.1:0"\n'
            '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT", "ETHUSDT"]\n'
            f'channels = ["trade"]\nws_url = "{ws_url}"\nbackfill = false\ninstruments = false\n'
        )
        python = getattr(sys, "_base_executable", sys.executable)
        agent = subprocess.Popen(
            ["env", "-i", f"SHIV_ROOT={tmp_path}", python, "-I", "-S", str(PYZ), "--config",
             str(cfg)],
            cwd=tmp_path,
            stderr=(tmp_path / "agent.log").open("w"),
        )  # fmt: skip
        try:
            port = parent_http_port(tmp_path / "agent.log")
            poll(
                lambda: (
                    (r := get(port, "/readyz")) is not None
                    and r.status_code == 200
                    and len(r.json()["workers"]) == 2
                ),
                120,
            )
            poll(lambda: count(dsn, "BTCUSDT") > 20 and count(dsn, "ETHUSDT") > 20, 120)
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(60) == 0, (tmp_path / "agent.log").read_text()[-3000:]
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    finally:
        venue.terminate()
        venue.wait(10)
