-- Usage totals across subjects (SQLite): the rows of usage_rollups with the subjects folded
-- together, per meter, group-by values and minute, hour or day (same grains and columns, no
-- subject), so a query over all subjects reads windows × groups rows (keyed by time before
-- group, so a range of windows is one index range). Ingest writes them in the
-- same transaction as the per-subject rows; meter create/update/delete keep them in step.
-- Decimals stay exact: dec_total, dec_least, dec_greatest and dec_latest are billing's own
-- aggregates over TEXT decimals (registered on the connection before migrating).
CREATE TABLE usage_totals (
    meter_id  TEXT    NOT NULL,
    grain_ms  INTEGER NOT NULL,
    group_key TEXT    NOT NULL,
    start_ms  INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    sum       TEXT    NOT NULL,
    min       TEXT   ,
    max       TEXT   ,
    latest_ms INTEGER,
    latest    TEXT   ,
    PRIMARY KEY (meter_id, grain_ms, start_ms, group_key)
) WITHOUT ROWID;

-- Distinct values per total row (UNIQUE_COUNT meters): the union over subjects, so the count of
-- distinct values across subjects stays exact.
CREATE TABLE usage_total_uniques (
    meter_id  TEXT    NOT NULL,
    grain_ms  INTEGER NOT NULL,
    group_key TEXT    NOT NULL,
    start_ms  INTEGER NOT NULL,
    value     TEXT    NOT NULL,
    PRIMARY KEY (meter_id, grain_ms, start_ms, group_key, value)
) WITHOUT ROWID;

-- Backfill from the usage already counted.
INSERT INTO usage_totals
    (meter_id, grain_ms, group_key, start_ms, count, sum, min, max, latest_ms, latest)
SELECT meter_id, grain_ms, group_key, start_ms, SUM(count), dec_total(sum), dec_least(min),
       dec_greatest(max), MAX(latest_ms), dec_latest(latest_ms, latest)
FROM usage_rollups
GROUP BY meter_id, grain_ms, group_key, start_ms;

INSERT INTO usage_total_uniques (meter_id, grain_ms, group_key, start_ms, value)
SELECT DISTINCT meter_id, grain_ms, group_key, start_ms, value FROM usage_uniques;
