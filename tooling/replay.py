"""`herald replay events`: rebuild ClickHouse's projections from the log.

ClickHouse is a projection of `herald.events` and `herald.dlq`: this reads them again (from the
beginning, or from the first message at or after `--since`) up to where they end now, and inserts
what it reads with the sink's own conversion (sinks/event_sink.py). Replaying is idempotent: the
tables collapse rows on their keys (read them with FINAL), so counts after a replay equal counts
before. Records the sink could not convert are counted, not dead-lettered again (the sink did that
when it first read them).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from kafka import KafkaConsumer, TopicPartition

from sinks.event_sink import PROJECTIONS, ClickHouseWriter, process
from streams.codec import default_serde
from streams.settings import Settings


@dataclass
class Replayed:
    messages: int = 0
    rows: int = 0
    refused: int = 0
    unconvertible: int = 0


def start_offsets(consumer: KafkaConsumer, partitions: list[TopicPartition], since: datetime | None,
                  ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    if since is None:
        return consumer.beginning_offsets(partitions)
    found = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
    return {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in partitions}


def replay_events(settings: Settings, since: datetime | None, say: Callable[[str], None]) -> Replayed:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                             max_poll_records=5000)
    writer = ClickHouseWriter(settings)
    serde = default_serde()
    done = Replayed()
    try:
        partitions = [TopicPartition(topic, p) for topic in PROJECTIONS
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)  # what the log holds now; later events are the sink's
        for tp, offset in start_offsets(consumer, partitions, since, ends).items():
            consumer.seek(tp, offset)
        pending = {tp for tp in partitions if consumer.position(tp) < ends[tp]}
        while pending:
            polled = consumer.poll(timeout_ms=1000)
            records = [r for tp, batch in polled.items() for r in batch if r.offset < ends[tp]]
            batches, dead, skipped = process(records, serde)
            refused = writer.insert(batches)
            done.messages += len(records)
            done.rows += sum(len(rows) for rows in batches.values()) - len(refused)
            done.refused += len(refused)
            done.unconvertible += len(dead) + skipped
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
            if records:
                say(f"{done.messages:,} messages, {done.rows:,} rows")
        return done
    finally:
        consumer.close()
