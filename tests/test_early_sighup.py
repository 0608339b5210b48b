"""A SIGHUP before the command's signal guard is in place does not end the process.

Python's default SIGHUP ends a process. The guard (``interrupts.install()``)
comes after importing the CLI, ~0.5 s into start-up (longer on a loaded
machine): a ``kill -HUP`` then (logrotate, a deploy script) ended a starting
agent with no log line, exit 129. The console script and ``python -m mdagent``
now start with ``mdagent.entry``, which imports nothing heavy and makes a
SIGHUP harmless before the heavy imports begin.
"""

from __future__ import annotations

import tomllib

from tests.test_cli import REPO, run_python

# The heavy imports with a SIGHUP arriving in the middle of them, after the
# entry module: the process must live on and reach the CLI.
_SCRIPT = """
import os, signal
import mdagent.entry
os.kill(os.getpid(), signal.SIGHUP)
import mdagent.cli
os.kill(os.getpid(), signal.SIGHUP)
print("alive")
"""


def test_a_sighup_during_the_imports_is_harmless() -> None:
    result = run_python(_SCRIPT)
    assert (result.returncode, result.stdout.strip()) == (0, "alive"), result.stderr


def test_every_way_in_starts_with_the_entry_module() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"mdagent": "mdagent.entry:main"}
    main_module = (REPO / "mdagent" / "__main__.py").read_text()
    first_import = next(
        line for line in main_module.splitlines() if line.startswith(("import ", "from "))
    )
    assert first_import.startswith("from mdagent.entry import"), first_import


def test_children_get_the_default_sighup_back() -> None:
    """A Python-level handler, not SIG_IGN: an ignored signal would stay
    ignored in every child (initdb, postgres, psql) across exec."""
    script = (
        "import mdagent.entry, subprocess; subprocess.run(['grep', 'SigIgn', '/proc/self/status'])"
    )
    result = run_python(script)
    ignored = int(result.stdout.split()[1], 16)
    assert not ignored & (1 << 0), result.stdout  # bit 0: SIGHUP (signal 1)
