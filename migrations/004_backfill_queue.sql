-- The backfill queue (issue 11). fetch_jobs already had the range, cursor,
-- status, attempts, error and lease columns; this adds what the workers need:
-- - states: 'unrecoverable' (the venue keeps no history for it: Binance
--   bookTicker, Polygon data the plan does not cover) and 'absent' (ids that
--   REST proves never existed: the page read from them jumps past), besides
--   pending / running / done / failed;
-- - next_retry_at: a job that failed transiently waits until then;
-- - rows_written / requests: progress, for status and metrics;
-- - parent_id: an 'absent' or 'unrecoverable' range found by a job points at it.
-- `cursor` is the job's checkpoint: it is written in the same transaction as
-- the rows of the page it follows, so a job resumes exactly where it stopped.
ALTER TABLE fetch_jobs DROP CONSTRAINT fetch_jobs_status_check;
ALTER TABLE fetch_jobs ADD CONSTRAINT fetch_jobs_status_check
    CHECK (status IN ('pending', 'running', 'done', 'failed', 'unrecoverable', 'absent'));
ALTER TABLE fetch_jobs
    ADD COLUMN next_retry_at timestamptz,
    ADD COLUMN rows_written  bigint  NOT NULL DEFAULT 0,
    ADD COLUMN requests      integer NOT NULL DEFAULT 0,
    ADD COLUMN parent_id     bigint REFERENCES fetch_jobs (id) ON DELETE SET NULL;
-- `mdagent backfill` plans a range as jobs; running it again must find the
-- same jobs (resume) rather than add copies.
CREATE UNIQUE INDEX fetch_jobs_backfill_range_idx
    ON fetch_jobs (provider, symbol, channel, from_ts_ns, to_ts_ns)
    WHERE kind = 'backfill';
