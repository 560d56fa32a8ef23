-- Usage totals across subjects (PostgreSQL): the rows of usage_rollups with the subjects folded
-- together, per meter, group-by values and minute, hour or day (same grains and columns, no
-- subject), so a query over all subjects reads windows × groups rows (keyed by time before
-- group, so a range of windows is one index range). Ingest writes them in the
-- same transaction as the per-subject rows; meter create/update/delete keep them in step.
CREATE TABLE usage_totals (
    meter_id  TEXT    NOT NULL,
    grain_ms  BIGINT  NOT NULL,
    group_key TEXT    NOT NULL,
    start_ms  BIGINT  NOT NULL,
    count     BIGINT  NOT NULL,
    sum       NUMERIC NOT NULL,
    min       NUMERIC,
    max       NUMERIC,
    latest_ms BIGINT,
    latest    NUMERIC,
    PRIMARY KEY (meter_id, grain_ms, start_ms, group_key)
);

-- Distinct values per total row (UNIQUE_COUNT meters): the union over subjects, so the count of
-- distinct values across subjects stays exact.
CREATE TABLE usage_total_uniques (
    meter_id  TEXT   NOT NULL,
    grain_ms  BIGINT NOT NULL,
    group_key TEXT   NOT NULL,
    start_ms  BIGINT NOT NULL,
    value     TEXT   NOT NULL,
    PRIMARY KEY (meter_id, grain_ms, start_ms, group_key, value)
);

-- Backfill from the usage already counted. LATEST: the value at the latest instant, at equal
-- instants the larger value (the rule ingest folds by).
INSERT INTO usage_totals
    (meter_id, grain_ms, group_key, start_ms, count, sum, min, max, latest_ms, latest)
SELECT meter_id, grain_ms, group_key, start_ms, SUM(count), SUM(sum), MIN(min), MAX(max),
       MAX(latest_ms),
       (ARRAY_AGG(latest ORDER BY latest_ms DESC NULLS LAST, latest DESC NULLS LAST))[1]
FROM usage_rollups
GROUP BY meter_id, grain_ms, group_key, start_ms;

INSERT INTO usage_total_uniques (meter_id, grain_ms, group_key, start_ms, value)
SELECT DISTINCT meter_id, grain_ms, group_key, start_ms, value FROM usage_uniques;
