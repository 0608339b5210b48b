"""The console script's first code: from here on a SIGHUP does not end the process.

Python's default SIGHUP ends a process. The commands' signal guard
(:func:`mdagent.interrupts.install`) comes after importing the CLI, about
0.5 s into start-up and longer on a loaded machine; a ``kill -HUP`` in that
window (logrotate, a deploy script) ended a starting agent with no log line
(exit 129). This module imports nothing heavy, so what is left of the window
is the interpreter's own start. The guard then takes over (it records a
SIGHUP too; the agent applies it once its loop runs).
"""

from __future__ import annotations

import signal

from mdagent import interrupts  # the standard library only

# A Python handler, not SIG_IGN: an ignored signal stays ignored in every
# child across exec (initdb, postgres, psql); a handler is reset there. It
# records the SIGHUP: the agent's loop re-reads the config once it runs.
signal.signal(signal.SIGHUP, interrupts.note_reload)


def main() -> int:
    """The ``mdagent`` console script (``mdagent.cli.main`` once imported)."""
    from mdagent.cli import main as cli_main

    return cli_main()
