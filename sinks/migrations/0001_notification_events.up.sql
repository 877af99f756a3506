-- One row per lifecycle event (schemas/LifecycleEvent.avsc).
-- ReplacingMergeTree on the full key makes a replay of herald.events idempotent: rows with the same
-- (tenant, notification_id, event_id) collapse into one; read with FINAL for exact counts.
-- The partition comes from the event's own time, so a replayed event lands in the partition of
-- its first copy and can be collapsed with it.
CREATE TABLE IF NOT EXISTS {db}.notification_events
(
    event_id        UUID,
    notification_id UUID,
    tenant          String,
    stage           String,
    status          String,
    channel         String,
    provider        String,
    template        String,
    category        String,
    priority        String,
    attempt         UInt16,
    error_code      String,
    detail          String,
    latency_ms      Nullable(Int64),
    event_time      DateTime,
    event_time_ms   UInt64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (tenant, notification_id, event_id)
