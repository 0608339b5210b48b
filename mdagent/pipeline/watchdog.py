"""systemd's watchdog: WATCHDOG=1 every WatchdogSec/2 while the agent makes progress.

The pings come from a task of the event loop, so a blocked loop stops them.
They also stop while a condition says the agent is stuck in a way the loop
does not notice: one database write running longer than WatchdogSec (a hung
COPY in a worker thread; a database that is away is retried and does not
count). systemd then restarts the service (``Restart=on-failure``).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from mdagent.pipeline.sdnotify import sd_notify, watchdog_interval_s

log = structlog.get_logger("mdagent.watchdog")

# Returns why the agent is stuck, or None when it is fine.
StuckCheck = Callable[[], str | None]


async def run_watchdog(stuck: StuckCheck, interval_s: float | None = None) -> None:
    """Ping while ``stuck()`` is None; without WATCHDOG_USEC (and no interval) do nothing."""
    interval = interval_s if interval_s is not None else watchdog_interval_s()
    if interval is None:
        await trio.sleep_forever()
        return
    withheld = False
    while True:
        reason = stuck()
        if reason is None:
            if withheld:
                log.info("watchdog.resumed")
                withheld = False
            sd_notify("WATCHDOG=1")
        elif not withheld:
            log.error("watchdog.withheld", reason=reason, note="systemd will restart the service")
            withheld = True
        await trio.sleep(interval)


def write_stuck_check(running_s: Callable[[], float | None], limit_s: float) -> StuckCheck:
    """A StuckCheck: stuck when the database write in progress has run
    (``running_s()``, seconds; None when idle: ``Writer.write_running_s``)
    longer than ``limit_s``."""

    def check() -> str | None:
        running = running_s()
        if running is None or running <= limit_s:
            return None
        return f"a database write has run for {running:.0f} s"

    return check
