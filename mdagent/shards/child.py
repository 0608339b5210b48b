"""The worker side: a child process of the parent agent (or ``python -m mdagent.shards``).

The parent writes one JSON line on the worker's stdin (the hello: database
DSN, config, config path, shard) and keeps the pipe open; the worker
answers with JSON lines on its stdout (``{"http_port": P}`` once its loopback
HTTP server listens, ``{"started": true}`` once its pipeline runs). Its logs
go to the stderr it shares with the parent, each line with ``worker``.

A worker must not outlive its parent (a ``kill -9`` of the parent leaves no
recorder the operator cannot see): end-of-file on its stdin, whose other
end only the parent holds (the kernel closes it when the parent dies, however
it dies), requests the agent's graceful stop; closing that pipe is also how
the parent asks a worker to stop. Not ``PR_SET_PDEATHSIG``: it fires when the
parent *thread* that forked exits, and trio starts processes from a worker
thread that idles out after seconds. Either way it drains like the
agent does: what it read is committed, within ``shutdown_grace_s``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import structlog
import trio

from mdagent.config import CONVERTER, Config
from mdagent.shards.assign import Shard

log = structlog.get_logger("mdagent.shards")

# The reports' descriptor: stdout as the parent gave it. fd 1 itself is
# pointed at stderr, so a stray print cannot corrupt the report stream.
_reports_fd: int | None = None


def check_parent(parent_pid: int) -> None:
    """SystemExit(0) when the parent that started this worker is gone already."""
    if os.getppid() != parent_pid:
        raise SystemExit(0)


def report_to_parent(**fields: Any) -> None:
    """One JSON line to the parent (nothing when this process is no worker)."""
    if _reports_fd is None:
        return
    os.write(_reports_fd, json.dumps(fields).encode() + b"\n")


async def watch_parent(stop: Callable[[], None]) -> None:
    """Call ``stop`` once stdin ends: the parent asks this worker to stop, or is gone."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    async with stream:
        while await stream.receive_some(4096):
            pass  # the parent writes nothing after the hello
    log.info("shard.stop_requested", by="end of stdin (parent stopping or gone)")
    stop()


def read_hello() -> dict[str, Any]:
    """The parent's first stdin line, read byte by byte (nothing past it is consumed)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            raise SystemExit(0)  # the parent died before saying hello
        line += byte
    hello: dict[str, Any] = json.loads(line)
    return hello


def main(argv: list[str] | None = None) -> int:
    """Run one worker; ``argv``: [the parent's pid]. Exit status as the agent's."""
    global _reports_fd
    argv = sys.argv[1:] if argv is None else argv
    check_parent(int(argv[0]))
    _reports_fd = os.dup(1)
    os.dup2(2, 1)
    hello = read_hello()
    config: Config = CONVERTER.structure(hello["config"], Config)
    shard = Shard(hello["shard"][0], hello["shard"][1])
    from mdagent import interrupts
    from mdagent.logs import configure_logging
    from mdagent.pipeline.agent import Agent

    configure_logging(config.agent.log_level, config.agent.log_format)
    structlog.contextvars.bind_contextvars(worker=shard.index)
    interrupts.install()
    agent = Agent(config, hello["dsn"], config_path=hello["config_path"], shard=shard)
    log.info("shard.worker_started", shard=str(shard), pid=os.getpid())
    try:
        with interrupts.deferred():
            trio.run(agent.run)
            agent.copy_writer.close()
    except interrupts.Interrupted:
        return 0  # stopped before the loop ran: nothing was read
    return agent.exit_code
