"""The embedded PostgreSQL, started again when it dies under the running agent.

With ``dsn = "embedded"`` the agent started the server, so nobody else will
start it again: a postmaster killed (the OOM killer, an operator's
``kill -9``, a crash) left the agent "database not writable" until someone
restarted the agent, while its streams ran into backpressure and recorded
gaps. This task looks at the server every ``CHECK_EVERY_S`` and, once the
postmaster is gone, starts it again on the same data directory (PostgreSQL
then replays its WAL: what was committed stays committed). The writer holds
its batch and retries meanwhile, as in any database outage, so nothing is
lost beyond what backpressure records as gaps.

A start that fails (the old server's backends still hold its shared memory
for a moment, a full disk) is retried with a growing delay, one log line
each, for as long as the agent runs.
"""

from __future__ import annotations

import structlog
import trio

from mdagent.db.embedded import EmbeddedServer
from mdagent.errors import DatabaseUnavailable
from mdagent.pipeline.backoff import Backoff
from mdagent.pipeline.metrics import Metrics

log = structlog.get_logger("mdagent.embedded")

# How often the postmaster is looked for (a /proc read and a file read).
CHECK_EVERY_S = 1.0
# Delays between failed starts: the first retry soon (the dead server's
# backends exit within moments), then up to a minute.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


async def keep_embedded_server(server: EmbeddedServer, metrics: Metrics) -> None:
    """Start ``server`` again whenever its postmaster is found gone; runs until cancelled.

    Counts each start in ``mdagent_embedded_restarts_total``. Never raises
    for a failed start (DatabaseUnavailable is logged and retried).
    """
    backoff = Backoff(RETRY_FIRST_S, RETRY_MAX_S)
    while True:
        await trio.sleep(CHECK_EVERY_S)
        if await trio.to_thread.run_sync(server.postmaster_pid) is not None:
            continue
        log.error("embedded.died", pgdata=str(server.pgdata), action="starting it again")
        while True:
            try:
                await trio.to_thread.run_sync(server.start)
            except DatabaseUnavailable as exc:
                delay = backoff.next_delay()
                log.warning("embedded.restart_failed", error=str(exc), retry_in_s=round(delay, 1))
                await trio.sleep(delay)
                continue
            backoff.reset()
            metrics.embedded_restarts.inc()
            log.info("embedded.restarted", pid=server.postmaster_pid())
            break
