-- One row per dead letter (schemas/DeadLetter.avsc) from herald.dlq, so operators can query what
-- Herald could not process next to the lifecycle events. A replay collapses on the full key.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    failed_at       DateTime,
    failed_at_ms    UInt64,
    stage           String,
    reason_code     String,
    detail          String,
    topic           String,
    partition       Int32,
    offset          Int64,
    notification_id String,
    original_key    String,
    original_value  String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(failed_at)
ORDER BY (stage, topic, partition, offset, notification_id, reason_code, failed_at_ms)
