"""`herald replay events` rebuilds ClickHouse's projections from the log; `herald replay dlq` sends
dead letters and rejections back once their cause is fixed.

ClickHouse is a projection of `herald.events` and `herald.dlq`: this reads them again (from the
beginning, or from the first message at or after `--since`) up to where they end now, and inserts
what it reads with the sink's own conversion (sinks/event_sink.py). Replaying is idempotent: the
tables collapse rows on their keys (read them with FINAL), so counts after a replay equal counts
before. The dashboard's rollups (sinks/rollups.py), which counted the replayed copies again as they
were inserted, are then recomputed for the days replayed. Records the sink could not convert are counted, not dead-lettered again (the sink did that
when it first read them).

`herald replay dlq --reason R [--stage S]` reads herald.dlq and herald.rejected: a dead letter goes
back to the topic it came from, a rejection to the input of the stage that made it (after a
template fix, `--reason unknown_template` sends the notifications validate refused back to
herald.accepted). Each goes back at most once, across runs: herald.state.replayed remembers them.
"""

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas.serde import SchemaDecodeError
from sinks.clickhouse_client import connect
from sinks.event_sink import PROJECTIONS, ClickHouseWriter, process
from sinks.rollups import rebuild
from streams.codec import bundle, default_serde
from streams.kafka_clients import client_kwargs
from streams.settings import Settings
from streams.topics import CATALOG, DLQ, REJECTED, REPLAYED, TopicSpec

CATALOG_BY_NAME = {spec.name: spec for spec in CATALOG}


@dataclass
class Replayed:
    messages: int = 0
    rows: int = 0
    refused: int = 0
    unconvertible: int = 0
    rollup_days: list[int] = field(default_factory=list)  # the days (YYYYMMDD) whose rollups were recomputed


def start_offsets(consumer: KafkaConsumer, partitions: list[TopicPartition], since: datetime | None,
                  ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    if since is None:
        return consumer.beginning_offsets(partitions)
    found = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
    return {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in partitions}


def replay_events(settings: Settings, since: datetime | None, say: Callable[[str], None]) -> Replayed:
    consumer = KafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                             max_poll_records=5000)
    writer = ClickHouseWriter(settings)
    serde = default_serde()
    done = Replayed()

    def insert(records: list[Any]) -> None:
        batches, dead, skipped = process(records, serde)
        refused = writer.insert(batches)
        done.messages += len(records)
        done.rows += sum(len(rows) for rows in batches.values()) - len(refused)
        done.refused += len(refused)
        done.unconvertible += len(dead) + skipped
        say(f"{done.messages:,} messages, {done.rows:,} rows")

    try:
        partitions = [TopicPartition(topic, p) for topic in PROJECTIONS
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        records: list[Any] = []
        for record in read_to_end(consumer, partitions, since):  # where the log ends now; later is the sink's
            records.append(record)
            if len(records) >= 5000:
                insert(records)
                records = []
        if records:
            insert(records)
        if done.rows:
            client = connect(settings)
            try:
                done.rollup_days = rebuild(client, since)
            finally:
                client.disconnect()
        return done
    finally:
        consumer.close()


# --- herald replay dlq ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendBack:
    """One refused record and where it goes back to."""

    mark: str  # what was refused, its key in herald.state.replayed (see `mark`)
    target: TopicSpec
    key: bytes | None
    value: bytes


def mark(source: str, record: dict[str, Any], value: bytes) -> str:
    """The refused record's identity: where it was refused, why, and a digest of what it held. Not its
    offset: a record sent back and refused again for the same reason (its cause not fixed after all)
    is a new message with the same identity, and must not go round again."""
    digest = hashlib.blake2b(value, digest_size=16).hexdigest()
    return f"{source}/{record['stage']}/{record['reason_code']}/{digest}"


def send_back(source: str, record: dict[str, Any]) -> SendBack | None:
    """A dead letter goes back to the topic it came from; a rejection to the input of the stage that
    made it (a notification rejected by validate goes back to herald.accepted)."""
    from agents.registry import STAGES

    if source == DLQ.name:
        target = CATALOG_BY_NAME.get(record["topic"])
        if target is None or not record["original_value"]:
            return None
        return SendBack(mark(source, record, record["original_value"]), target, record["original_key"],
                        record["original_value"])
    stage = STAGES.get(record["stage"])
    if stage is None or not stage.inputs:
        return None
    return SendBack(mark(source, record, record["original"]), stage.inputs[0], record["notification_id"].bytes,
                    record["original"])


def replayed_marks(consumer: KafkaConsumer) -> set[str]:
    """What earlier replays sent back (herald.state.replayed, read whole)."""
    partitions = [TopicPartition(REPLAYED.name, p) for p in sorted(consumer.partitions_for_topic(REPLAYED.name) or ())]
    return {record.key.decode() for record in read_to_end(consumer, partitions, None) if record.key}


def read_to_end(consumer: KafkaConsumer, partitions: list[TopicPartition], since: datetime | None) -> Iterator[Any]:
    """Every record of these partitions from the start (or `since`) to where they end now."""
    consumer.assign(partitions)
    ends = consumer.end_offsets(partitions)
    for tp, offset in start_offsets(consumer, partitions, since, ends).items():
        consumer.seek(tp, offset)
    pending = {tp for tp in partitions if consumer.position(tp) < ends[tp]}
    while pending:
        for tp, batch in consumer.poll(timeout_ms=1000).items():
            yield from (record for record in batch if record.offset < ends[tp])
        pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}


def replay_refused(settings: Settings, reason: str, stage: str | None, say: Callable[[str], None]) -> Counter[str]:
    """Send the dead letters and rejections with this reason (and stage) back where they came from,
    each at most once across replays; returns how many went back to each topic."""
    serde = default_serde()
    consumer = KafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False)
    producer = KafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=True,
                             max_request_size=settings.max_message_bytes)
    sent: Counter[str] = Counter()
    try:
        done = replayed_marks(consumer)
        for source, schema in ((DLQ.name, "DeadLetter"), (REJECTED.name, "Rejection")):
            partitions = [TopicPartition(source, p) for p in sorted(consumer.partitions_for_topic(source) or ())]
            for message in read_to_end(consumer, partitions, None):
                try:
                    record = serde.decode(message.value, schema)
                except SchemaDecodeError:
                    continue  # the sink keeps what does not decode; nothing here to send back
                if record["reason_code"] != reason or (stage and record["stage"] != stage):
                    continue
                back = send_back(source, record)
                if back is None or back.mark in done:
                    continue
                value = bundle(serde, [(back.key, back.value)]) if back.target.bundled else back.value
                producer.send(back.target.name, key=back.key, value=value).get(timeout=30)
                # Marked once the record is back: a crash in between sends it again, which the
                # stages absorb (idempotency keys, the delivered table); never marked unsent.
                producer.send(REPLAYED.name, key=back.mark.encode(), value=b'{"replayed": true}').get(timeout=30)
                done.add(back.mark)
                sent[back.target.name] += 1
                say(f"{sum(sent.values()):,} sent back")
        return sent
    finally:
        producer.close()
        consumer.close()
