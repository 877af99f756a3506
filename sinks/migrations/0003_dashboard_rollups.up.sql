-- What the dashboard (gateway/dashboard.py) and Grafana (deploy/grafana/herald.json) read, so that no
-- chart scans notification_events with FINAL. Two rollups, each filled by a materialized view on every
-- INSERT into notification_events (TO tables, so the rollups are plain tables one can drop partitions of):
--   events_per_minute:  event counts per minute × tenant × channel × status × error code (SummingMergeTree;
--                       read with sum(events), rows of one key are summed only when parts merge);
--   latency_per_minute: quantile states of latency_ms per minute × tenant × channel × status
--                       (AggregatingMergeTree; read with quantilesMerge).
-- A view counts rows as they are inserted, before ReplacingMergeTree collapses copies: `herald replay
-- events` rebuilds the rollups of the days it replayed (sinks/rollups.py, rebuild).
CREATE TABLE IF NOT EXISTS {db}.events_per_minute
(
    minute     DateTime,
    tenant     String,
    channel    String,
    status     String,
    error_code String,
    events     UInt64
)
ENGINE = SummingMergeTree(events)
PARTITION BY toYYYYMMDD(minute)
ORDER BY (tenant, minute, channel, status, error_code);

CREATE TABLE IF NOT EXISTS {db}.latency_per_minute
(
    minute  DateTime,
    tenant  String,
    channel String,
    status  String,
    latency AggregateFunction(quantiles(0.5, 0.95, 0.99), Int64)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMMDD(minute)
ORDER BY (tenant, minute, channel, status);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.events_per_minute_mv TO {db}.events_per_minute AS
SELECT toStartOfMinute(event_time) AS minute, tenant, channel, status, error_code, count() AS events
FROM {db}.notification_events
GROUP BY minute, tenant, channel, status, error_code;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.latency_per_minute_mv TO {db}.latency_per_minute AS
SELECT toStartOfMinute(event_time) AS minute, tenant, channel, status,
       quantilesState(0.5, 0.95, 0.99)(assumeNotNull(latency_ms)) AS latency
FROM {db}.notification_events
WHERE latency_ms IS NOT NULL
GROUP BY minute, tenant, channel, status;

-- Backfill: the rows stored before the views existed, read with FINAL (each event once). Rows a sink
-- inserts between the views' creation and this SELECT are counted twice; `herald migrate` runs before
-- the workers start (make setup, the Kubernetes migrate Job), so there are none then.
INSERT INTO {db}.events_per_minute
SELECT toStartOfMinute(event_time) AS minute, tenant, channel, status, error_code, count() AS events
FROM {db}.notification_events FINAL
GROUP BY minute, tenant, channel, status, error_code;

INSERT INTO {db}.latency_per_minute
SELECT toStartOfMinute(event_time) AS minute, tenant, channel, status,
       quantilesState(0.5, 0.95, 0.99)(assumeNotNull(latency_ms)) AS latency
FROM {db}.notification_events FINAL
WHERE latency_ms IS NOT NULL
GROUP BY minute, tenant, channel, status
