-- Two writers (or two agents) may ask for the same day partition at once.
-- The advisory lock serializes them, but to_regclass() reads the catalog
-- cache, which an advisory lock does not refresh: the second caller could
-- miss the table the first had just committed and fail with duplicate_table.
-- Re-check through pg_class (an MVCC read with a fresh snapshot) and treat
-- duplicate_table as success.
CREATE OR REPLACE FUNCTION mdagent_ensure_day_partition(parent regclass, day date)
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
    PERFORM pg_advisory_xact_lock(hashtext('mdagent.partition.' || part_name));
    IF EXISTS (SELECT 1 FROM pg_class WHERE relname = part_name
               AND relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = parent)) THEN
        RETURN part_name;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part_name, parent_name);
    EXCEPTION WHEN duplicate_table THEN
        RETURN part_name;
    END;
    EXECUTE format(
        'WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
        parent_name || '_default', key_col, lo, key_col, hi, part_name);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        parent_name, part_name, lo, hi);
    RETURN part_name;
END;
$$;
