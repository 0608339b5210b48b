"""The console script's first code: from here on a SIGHUP does not end the process.

Python's default SIGHUP ends a process. The commands' signal guard
(:func:`mdagent.interrupts.install`) comes after importing the CLI, about
0.5 s into start-up and longer on a loaded machine; a ``kill -HUP`` in that
window (logrotate, a deploy script) ended a starting agent with no log line
(exit 129). This module imports nothing heavy, so what is left of the window
is the interpreter's own start. The guard then takes over (a SIGHUP during
start-up is ignored there too: the config is being read anyway).
"""

from __future__ import annotations

import signal
from types import FrameType


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """A Python handler, not SIG_IGN: an ignored signal stays ignored in every
    child across exec (initdb, postgres, psql); a handler is reset there."""


signal.signal(signal.SIGHUP, _ignore)


def main() -> int:
    """The ``mdagent`` console script (``mdagent.cli.main`` once imported)."""
    from mdagent.cli import main as cli_main

    return cli_main()
