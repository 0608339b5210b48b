"""What an agent process imports: not the optional extras of its libraries.

Every agent process (one process, a parent of workers, each worker) loads
its imports into private memory: modules it never uses cost megabytes in
each (README, Benchmarks: memory with worker processes).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

TRACEBACK_SCRIPT = """
import sys
import structlog
from mdagent.logs import configure_logging
configure_logging("info", "{fmt}")
try:
    raise ValueError("boom 42")
except ValueError:
    structlog.get_logger("t").exception("failed")
print("rich" in sys.modules)
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_an_agent_process_logs_tracebacks_without_loading_rich(fmt: str) -> None:
    """structlog loaded rich (~3 MB in every process) for tracebacks the log
    chain never asked it for: format_exc_info renders them first (logs.py)."""
    done = run_python("import mdagent.entry\n" + TRACEBACK_SCRIPT.format(fmt=fmt))
    assert done.stdout.strip() == "False"
    assert "Traceback (most recent call last)" in done.stderr
    assert "ValueError: boom 42" in done.stderr


def test_httpx_is_imported_without_its_command_line_client() -> None:
    """httpx loaded click, rich and pygments for its CLI (~4 MB in a parent of
    workers, which imports httpx for the workers' /metrics and the backfill)."""
    code = (
        "import sys, mdagent.entry, httpx, mdagent.shards.http\n"
        "print(sorted(m for m in ('click', 'rich', 'pygments') if m in sys.modules))\n"
        "print(httpx.AsyncClient.__name__)"
    )
    assert run_python(code).stdout.split() == ["[]", "AsyncClient"]
