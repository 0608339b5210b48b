-- mdagent schema, version 1.
-- Canonical tables are partitioned by day on `ts` (milliseconds, UTC). The
-- natural keys include `ts` because PostgreSQL requires every unique
-- constraint on a partitioned table to contain the partition key; `ts` is
-- the event time truncated to milliseconds so the same event from a stream
-- (ms) and from REST (ns) has the same key. `ts_ns` keeps full precision.

CREATE TABLE providers (
    name        text PRIMARY KEY,
    ws_url      text,
    rest_url    text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instruments (
    provider    text NOT NULL,
    symbol      text NOT NULL,
    base_asset  text,
    quote_asset text,
    status      text,
    tick_size   numeric,
    lot_size    numeric,
    raw         jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, symbol)
);

CREATE TABLE trades (
    provider        text        NOT NULL,
    symbol          text        NOT NULL,
    channel         text        NOT NULL,   -- trade | aggTrade | T
    trade_id        text        NOT NULL,   -- natural id, see README "natural keys"
    ts              timestamptz NOT NULL,
    ts_ns           bigint      NOT NULL,   -- exact event time, ns since epoch
    seq             bigint,
    price           numeric     NOT NULL,
    size            numeric     NOT NULL,
    is_buyer_maker  boolean,
    exchange        integer,
    tape            smallint,
    conditions      integer[],
    trf_id          integer,
    first_trade_id  bigint,
    last_trade_id   bigint,
    correction      integer,
    received_at     timestamptz NOT NULL,
    PRIMARY KEY (provider, symbol, channel, trade_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE quotes (
    provider      text        NOT NULL,
    symbol        text        NOT NULL,
    channel       text        NOT NULL,   -- bookTicker | Q
    seq           bigint      NOT NULL,   -- bookTicker u; Polygon sequence number
    ts            timestamptz NOT NULL,   -- event time (bookTicker: receive time)
    ts_ns         bigint      NOT NULL,
    bid_price     numeric     NOT NULL,
    bid_size      numeric     NOT NULL,
    ask_price     numeric     NOT NULL,
    ask_size      numeric     NOT NULL,
    bid_exchange  integer,
    ask_exchange  integer,
    condition     integer,
    indicators    integer[],
    tape          smallint,
    received_at   timestamptz NOT NULL,
    PRIMARY KEY (provider, symbol, channel, seq, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE candles (
    provider      text        NOT NULL,
    symbol        text        NOT NULL,
    interval      text        NOT NULL,   -- 1s, 1m, ...
    ts            timestamptz NOT NULL,   -- bar open time
    close_ts      timestamptz NOT NULL,
    open          numeric     NOT NULL,
    high          numeric     NOT NULL,
    low           numeric     NOT NULL,
    close         numeric     NOT NULL,
    volume        numeric     NOT NULL,
    quote_volume  numeric,
    vwap          numeric,
    trade_count   bigint,
    final         boolean     NOT NULL,
    event_ts_ns   bigint      NOT NULL,   -- newest re-send of a bar wins
    received_at   timestamptz NOT NULL,
    PRIMARY KEY (provider, symbol, interval, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE trades_raw (
    provider     text        NOT NULL,
    source       text        NOT NULL,
    received_at  timestamptz NOT NULL,
    payload      text        NOT NULL
) PARTITION BY RANGE (received_at);
CREATE INDEX trades_raw_received_idx ON trades_raw (provider, received_at);

-- The safety net: a timestamp outside every day partition still lands.
-- Maintenance moves such rows into their day partition when it creates it.
CREATE TABLE trades_default     PARTITION OF trades     DEFAULT;
CREATE TABLE quotes_default     PARTITION OF quotes     DEFAULT;
CREATE TABLE candles_default    PARTITION OF candles    DEFAULT;
CREATE TABLE trades_raw_default PARTITION OF trades_raw DEFAULT;

CREATE TABLE stream_offsets (
    provider    text        NOT NULL,
    symbol      text        NOT NULL,
    channel     text        NOT NULL,
    last_seq    bigint,
    last_ts_ns  bigint,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, symbol, channel)
);

CREATE TABLE fetch_jobs (
    id           bigserial PRIMARY KEY,
    provider     text        NOT NULL,
    symbol       text        NOT NULL,
    channel      text        NOT NULL,
    kind         text        NOT NULL DEFAULT 'gap',     -- gap | backfill
    reason       text        NOT NULL DEFAULT '',
    from_seq     bigint,
    to_seq       bigint,
    from_ts_ns   bigint,
    to_ts_ns     bigint,
    cursor       text,
    status       text        NOT NULL DEFAULT 'pending', -- pending | running | done | failed
    attempts     integer     NOT NULL DEFAULT 0,
    error        text,
    lease_owner  text,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    CHECK (from_seq IS NULL OR to_seq IS NULL OR from_seq <= to_seq),
    CHECK (from_ts_ns IS NULL OR to_ts_ns IS NULL OR from_ts_ns <= to_ts_ns)
);
CREATE INDEX fetch_jobs_pending_idx ON fetch_jobs (status, created_at) WHERE status IN ('pending', 'running');

CREATE TABLE dead_letter (
    id           bigserial PRIMARY KEY,
    provider     text        NOT NULL,
    source       text        NOT NULL,
    reason       text        NOT NULL,
    payload      text        NOT NULL,
    received_at  timestamptz NOT NULL
);

-- Create (or complete) the day partition of `parent` holding `day`.
-- Rows that already landed in the default partition for that day are moved
-- into the new partition in the same transaction, so creating a partition
-- late never fails and never loses a row.
CREATE FUNCTION mdagent_ensure_day_partition(parent regclass, day date)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    parent_name text := (SELECT relname FROM pg_class WHERE oid = parent);
    part_name   text := parent_name || '_p' || to_char(day, 'YYYYMMDD');
    key_col     text := CASE WHEN parent_name = 'trades_raw' THEN 'received_at' ELSE 'ts' END;
    lo          timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi          timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(part_name) IS NOT NULL THEN
        RETURN part_name;
    END IF;
    -- Serialize concurrent creators of the same partition (two agents).
    PERFORM pg_advisory_xact_lock(hashtext('mdagent.partition.' || part_name));
    IF to_regclass(part_name) IS NOT NULL THEN
        RETURN part_name;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part_name, parent_name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
        parent_name || '_default', key_col, lo, key_col, hi, part_name);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        parent_name, part_name, lo, hi);
    RETURN part_name;
END;
$$;
