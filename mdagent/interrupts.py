"""SIGTERM / SIGINT / SIGHUP outside the trio loop (start-up, server start and stop).

Python's default SIGTERM kills the process where it stands: during the
embedded server's start that left ``postgres`` or ``initdb`` running,
orphaned, with no log line. Commands that start a server install this
guard first. The first SIGTERM/SIGINT raises :class:`Interrupted` where
the main thread is (a wait for initdb, for the server to be ready, a
connect), so ``finally`` blocks stop what was started; any later signal is
only recorded. Inside :func:`deferred` (the trio loop, which reads signals
itself, and every clean-up) signals are recorded, never raised, so a second
SIGTERM cannot cut a server stop in half. A SIGHUP during start-up is
recorded, never raised: the config may have been read before it, so the
agent's loop re-reads the file once it runs (:func:`take_reload_request`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal arrived outside the trio loop. A BaseException (like
    KeyboardInterrupt) so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum)
        super().__init__(f"interrupted by {self.signal.name}")


class _Guard:
    def __init__(self) -> None:
        self.raising = False
        self.raised = False
        self.received: signal.Signals | None = None
        self.reload_requested = False

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
            return
        if self.received is None:
            self.received = signal.Signals(signum)
        if self.raising and not self.raised:
            self.raised = True
            raise Interrupted(signum)


_guard = _Guard()


def install() -> None:
    """Handle stop signals from now on: the first one raises Interrupted (outside deferred())."""
    _guard.raising = True
    for signum in _HANDLED:
        signal.signal(signum, _guard.handle)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within this block stop signals are recorded (see :func:`stop_requested`), never raised."""
    previous = _guard.raising
    _guard.raising = False
    try:
        yield
    finally:
        _guard.raising = previous


def note_reload(_signum: int, _frame: FrameType | None) -> None:
    """A SIGHUP handler for the first moments of start-up (``mdagent.entry``): recorded."""
    _guard.reload_requested = True


def take_reload_request() -> bool:
    """Whether a SIGHUP arrived before the agent's loop took signals over; clears it."""
    requested, _guard.reload_requested = _guard.reload_requested, False
    return requested


def stop_requested() -> signal.Signals | None:
    """The first stop signal seen by the guard, or None."""
    return _guard.received


def exiting() -> None:
    """The command is done: ignore stop signals from here on.

    While the interpreter finalizes, Python puts its default handlers back,
    and a SIGTERM then (a second one during a fast shutdown) would end the
    process with SIGTERM's status instead of the command's exit code.
    Ignored signals stay ignored through finalization.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
