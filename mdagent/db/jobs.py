"""The backfill queue in ``fetch_jobs``: claim, lease, retry, fail, plan.

States: ``pending`` (waiting, maybe until ``next_retry_at``), ``running``
(leased by ``lease_owner`` until ``lease_until``), ``done``, ``failed``
(the venue refused it, or it failed ``max_attempts`` times),
``unrecoverable`` (no REST history for it) and ``absent`` (an id range that
REST proves never existed, found by a job: ``parent_id``).

Claiming is ``FOR UPDATE SKIP LOCKED``: workers of one or several processes
never take the same job, and never wait on each other. A lease that is not
renewed expires, so the job of a worker that died (``kill -9``) is claimed
again and resumes at its checkpoint (``cursor``). The checkpoint itself is
not written here: it moves in the writer's transaction with the rows of the
page (:data:`PROGRESS_UPDATE`), so it never claims rows that are not stored.

Every function takes a sync psycopg connection in autocommit mode (callers
run them in a worker thread) and returns plain values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import psycopg

JOB_STATES = ("pending", "running", "done", "failed", "unrecoverable", "absent")


@attrs.frozen
class Job:
    """One claimed job. Ranges are inclusive; ``cursor`` is the checkpoint (None: from the start)."""

    id: int
    provider: str
    symbol: str
    channel: str
    kind: str  # "gap" (recorded by the agent) | "backfill" (planned by `mdagent backfill`)
    reason: str
    from_seq: int | None
    to_seq: int | None
    from_ts_ns: int | None
    to_ts_ns: int | None
    cursor: str | None
    attempts: int  # including this claim
    rows_written: int = 0


@attrs.frozen
class PlannedJob:
    """A range for ``mdagent backfill`` (inclusive ns bounds)."""

    provider: str
    symbol: str
    channel: str
    from_ts_ns: int
    to_ts_ns: int


_COLUMNS = (
    "id, provider, symbol, channel, kind, reason, from_seq, to_seq, from_ts_ns, to_ts_ns,"
    " cursor, attempts, rows_written"
)

_CLAIM = f"""
UPDATE fetch_jobs SET status = 'running', lease_owner = %(owner)s,
    lease_until = now() + make_interval(secs => %(lease_s)s),
    attempts = attempts + 1, updated_at = now()
WHERE id = (
    SELECT id FROM fetch_jobs
    WHERE provider = ANY(%(providers)s)
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND ((status = 'pending' AND (next_retry_at IS NULL OR next_retry_at <= now()))
           OR (status = 'running' AND lease_until < now()))
    ORDER BY id
    FOR UPDATE SKIP LOCKED
    LIMIT 1)
RETURNING {_COLUMNS}
"""

PROGRESS_UPDATE = """
UPDATE fetch_jobs SET cursor = %(cursor)s,
    status = CASE WHEN %(done)s THEN 'done' ELSE status END,
    lease_owner = CASE WHEN %(done)s THEN NULL ELSE lease_owner END,
    lease_until = CASE WHEN %(done)s THEN NULL ELSE now() + make_interval(secs => %(lease_s)s) END,
    error = CASE WHEN %(done)s THEN NULL ELSE error END,
    rows_written = rows_written + %(rows)s, requests = requests + %(requests)s,
    updated_at = now()
WHERE id = %(id)s AND lease_owner = %(owner)s AND status = 'running'
"""
"""The checkpoint of one page, run in the transaction of the page's rows.

A row count of 0 means the lease was lost (expired and claimed by another
worker): the caller must roll the page back (``LeaseLost``)."""

FOUND_RANGE_INSERT = """
INSERT INTO fetch_jobs (provider, symbol, channel, kind, status, reason, from_seq, to_seq, parent_id)
SELECT provider, symbol, channel, kind, %(status)s, %(reason)s, %(from_seq)s, %(to_seq)s, id
FROM fetch_jobs WHERE id = %(id)s
"""
"""An id range a job found ``absent`` (or ``unrecoverable``), recorded under the job."""


def _job(row: Sequence[object]) -> Job:
    return Job(*row)  # type: ignore[arg-type]


def claim(
    conn: psycopg.Connection,
    owner: str,
    providers: Sequence[str],
    lease_s: float,
    ids: Sequence[int] | None = None,
) -> Job | None:
    """Lease the oldest claimable job of ``providers`` (only ``ids`` if given), or None."""
    row = conn.execute(
        _CLAIM,
        {
            "owner": owner,
            "lease_s": lease_s,
            "providers": list(providers),
            "ids": list(ids) if ids is not None else None,
        },
    ).fetchone()
    return None if row is None else _job(row)


def renew(conn: psycopg.Connection, job_id: int, owner: str, lease_s: float) -> bool:
    """Extend a lease; False when it is no longer ours."""
    cur = conn.execute(
        "UPDATE fetch_jobs SET lease_until = now() + make_interval(secs => %s)"
        " WHERE id = %s AND lease_owner = %s AND status = 'running'",
        (lease_s, job_id, owner),
    )
    return cur.rowcount == 1


def retry_later(
    conn: psycopg.Connection,
    job_id: int,
    owner: str,
    error: str,
    delay_s: float,
    max_attempts: int | None,
) -> str:
    """Give a transiently failed job back (``pending`` after ``delay_s``), or ``failed``
    once it has been tried ``max_attempts`` times (None: never). Returns the new state."""
    row = conn.execute(
        "UPDATE fetch_jobs SET"
        " status = CASE WHEN attempts >= %(max)s::int THEN 'failed' ELSE 'pending' END,"
        " next_retry_at = now() + make_interval(secs => %(delay)s),"
        " error = %(error)s, lease_owner = NULL, lease_until = NULL, updated_at = now()"
        " WHERE id = %(id)s AND lease_owner = %(owner)s AND status = 'running'"
        " RETURNING status",
        {"max": max_attempts, "delay": delay_s, "error": error, "id": job_id, "owner": owner},
    ).fetchone()
    return "lost" if row is None else str(row[0])


def finish(conn: psycopg.Connection, job_id: int, owner: str, status: str, error: str) -> bool:
    """End a job for good: ``failed`` or ``unrecoverable`` with the reason."""
    if status not in ("failed", "unrecoverable"):
        raise ValueError(f"finish() sets failed or unrecoverable, not {status!r}")
    cur = conn.execute(
        "UPDATE fetch_jobs SET status = %s, error = %s, lease_owner = NULL,"
        " lease_until = NULL, updated_at = now()"
        " WHERE id = %s AND lease_owner = %s AND status = 'running'",
        (status, error, job_id, owner),
    )
    return cur.rowcount == 1


def release(conn: psycopg.Connection, job_id: int, owner: str) -> None:
    """Hand a job back untouched (shutdown): pending at once, this attempt not counted."""
    conn.execute(
        "UPDATE fetch_jobs SET status = 'pending', attempts = greatest(attempts - 1, 0),"
        " lease_owner = NULL, lease_until = NULL, updated_at = now()"
        " WHERE id = %s AND lease_owner = %s AND status = 'running'",
        (job_id, owner),
    )


def release_dead_owners(
    conn: psycopg.Connection, ids: Sequence[int] | None, is_dead: Callable[[str], bool]
) -> int:
    """Make ``running`` jobs (among ``ids``; None: all) pending when ``is_dead(lease_owner)``:
    a restart after a ``kill -9`` need not wait for the dead process's leases to expire."""
    scope = None if ids is None else list(ids)
    owners = conn.execute(
        "SELECT DISTINCT lease_owner FROM fetch_jobs WHERE status = 'running'"
        " AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[]))",
        (scope, scope),
    ).fetchall()
    dead = [o for (o,) in owners if o is not None and is_dead(o)]
    if not dead:
        return 0
    cur = conn.execute(
        "UPDATE fetch_jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL,"
        " updated_at = now() WHERE status = 'running' AND lease_owner = ANY(%s)",
        (dead,),
    )
    return cur.rowcount


def plan(conn: psycopg.Connection, jobs: Sequence[PlannedJob]) -> list[int]:
    """Insert ``backfill`` jobs not yet planned; return the ids of all of them, in order.

    Running the same plan again finds the existing rows (resume): only failed
    ones are made pending again, with their checkpoint kept.
    """
    ids: list[int] = []
    with conn.transaction():
        for job in jobs:
            key = (job.provider, job.symbol, job.channel, job.from_ts_ns, job.to_ts_ns)
            conn.execute(
                "INSERT INTO fetch_jobs (provider, symbol, channel, kind, reason,"
                " from_ts_ns, to_ts_ns) VALUES (%s, %s, %s, 'backfill', 'mdagent backfill', %s, %s)"
                " ON CONFLICT (provider, symbol, channel, from_ts_ns, to_ts_ns)"
                " WHERE kind = 'backfill' DO NOTHING",
                key,
            )
            row = conn.execute(
                "UPDATE fetch_jobs SET status = CASE WHEN status = 'failed' THEN 'pending'"
                " ELSE status END, attempts = CASE WHEN status = 'failed' THEN 0 ELSE attempts END,"
                " next_retry_at = CASE WHEN status = 'failed' THEN NULL ELSE next_retry_at END"
                " WHERE kind = 'backfill' AND provider = %s AND symbol = %s AND channel = %s"
                " AND from_ts_ns = %s AND to_ts_ns = %s RETURNING id",
                key,
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
    return ids


@attrs.frozen
class JobRow:
    """A job as ``status`` and the CLI show it."""

    id: int
    provider: str
    symbol: str
    channel: str
    status: str
    attempts: int
    rows_written: int
    requests: int
    error: str | None
    cursor: str | None
    from_seq: int | None
    to_seq: int | None
    from_ts_ns: int | None
    to_ts_ns: int | None


def jobs_by_id(conn: psycopg.Connection, ids: Sequence[int]) -> list[JobRow]:
    rows = conn.execute(
        "SELECT id, provider, symbol, channel, status, attempts, rows_written, requests, error,"
        " cursor, from_seq, to_seq, from_ts_ns, to_ts_ns FROM fetch_jobs WHERE id = ANY(%s)"
        " ORDER BY id",
        (list(ids),),
    ).fetchall()
    return [JobRow(*r) for r in rows]


def counts_by_state(conn: psycopg.Connection) -> dict[str, int]:
    """Jobs per state, every state present (0 when none), for metrics and status."""
    found: dict[str, int] = dict(
        conn.execute("SELECT status, count(*) FROM fetch_jobs GROUP BY status").fetchall()
    )
    return {state: int(found.get(state, 0)) for state in JOB_STATES}


@attrs.frozen
class FoundRange:
    """Ids a job proved ``absent`` on REST (or could not read: ``unrecoverable``), inclusive."""

    status: str
    reason: str
    from_seq: int
    to_seq: int


@attrs.frozen
class JobProgress:
    """A job's checkpoint after one page, committed with that page's rows.

    ``cursor``: where the next page starts (None with ``done``); ``rows`` and
    ``requests``: what this page added; ``lease_s``: the lease is extended by
    this much; ``found``: id ranges to record under the job.
    """

    job_id: int
    owner: str
    cursor: str | None
    done: bool
    rows: int
    requests: int
    lease_s: float
    found: tuple[FoundRange, ...] = ()

    def params(self) -> dict[str, object]:
        return {
            "id": self.job_id,
            "owner": self.owner,
            "cursor": self.cursor,
            "done": self.done,
            "rows": self.rows,
            "requests": self.requests,
            "lease_s": self.lease_s,
        }
