"""`mdagent bench`: throughput, latency and memory of the agent, next to bare references.

One run, one machine, figures only (never a pass/fail on timing):

1. Agent, max rate: the real :class:`~mdagent.pipeline.agent.Agent` in this
   process against a fake venue in a child process serving as fast as it can;
   committed rows/s over a steady-state window after a warm-up. Where the
   provider's bench profile says so (Polygon), a max-rate venue replays a
   generated tape instead of generating live (``fake-venue --replay``):
   generating cost the venue half a core of the machine being measured.
2. Agent, fixed rate: the venue paced at ``--latency-rate`` events/s in total;
   event time -> commit latency percentiles (the venue stamps event time when
   it generates the event, just before sending it; it keeps its own history
   out of the cyclic GC so that it never holds stamped events through a
   collection, testing/venue.py ``freeze_survivors``).
3. Peak RSS of this process over the agent phases (read before the
   references run, so their buffers do not count).
4. Reference A: one bare trio-websocket client calling ``get_message()`` in a
   loop on one connection to the same fake venue: frames/s (and events/s).
5. Reference B: the rows of the frames captured by reference A, built up
   front, then written with plain psycopg binary COPY (no mdagent writer code)
   into ``trades``/``quotes`` of a fresh migrated database, one transaction
   per ``batch_max_rows`` rows, like the agent: rows/s.

Each phase gets its own venue process and its own fresh database on the same
server (an embedded one in a temporary directory unless ``--dsn``), so no
phase sees another's offsets or rows. Targets that are missed are printed as
"target missed" lines; the exit status is 1 only when something failed to run.
"""

from mdagent.bench.report import Results, collect, format_report, main, missed_targets, run_bench
from mdagent.bench.settings import Settings
from mdagent.bench.setup import database_server, fake_venue, fresh_database

__all__ = [
    "Results",
    "Settings",
    "collect",
    "database_server",
    "fake_venue",
    "format_report",
    "fresh_database",
    "main",
    "missed_targets",
    "run_bench",
]
