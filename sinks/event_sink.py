"""The ClickHouse sink: herald.events → notification_events and herald.dlq → dead_letters, in four plain steps.

1. process: one record → one row (`event_to_row`, `dead_letter_to_row`, pure).
2. batch:   collect up to `sink_batch_size` events or `sink_flush_seconds` of them.
3. write:   one INSERT per batch; on failure pause the partitions and retry with backoff until it
            succeeds, so a ClickHouse outage stalls the sink instead of losing events.
4. commit:  Kafka offsets only after the insert returned.

Why a plain aiokafka consumer and not a Faust agent: Faust acks events as the stream iterates
(`stream.take()` acks its buffer in a `finally` even when the insert raised) and commits acked
offsets on its own timer, so it cannot promise "committed only after written". Here the commit is
an explicit call after the insert. A stop during a failed insert never reaches the commit; a replay
of uncommitted events is harmless because the table collapses rows by event_id.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from clickhouse_driver import Client
from mode import Service

from schemas.serde import AvroSerde, SchemaDecodeError, default_serde
from sinks.clickhouse_client import connect
from streams.dead_letters import dead_letter
from streams.settings import Settings
from streams.codec import unbundle
from streams.topics import DLQ, EVENTS, TopicSpec

log = logging.getLogger(__name__)

COLUMNS = (
    "event_id", "notification_id", "tenant", "stage", "status", "channel", "provider", "template",
    "category", "priority", "attempt", "error_code", "detail", "latency_ms", "event_time", "event_time_ms",
)
DEAD_LETTER_COLUMNS = (
    "failed_at", "failed_at_ms", "stage", "reason_code", "detail", "topic", "partition", "offset",
    "notification_id", "original_key", "original_value",
)


def event_to_row(event: dict[str, Any]) -> tuple[Any, ...]:
    occurred: datetime = event["occurred_at"]
    return (
        event["event_id"],
        event["notification_id"],
        event["tenant"],
        event["stage"],
        event["status"],
        event["channel"] or "",
        event["provider"] or "",
        event["template_id"] or "",
        event["category"] or "",
        event["priority"],
        event["attempt"],
        event["error_code"] or "",
        event["detail"] or "",
        event["latency_ms"],
        occurred,
        int(occurred.timestamp() * 1000),
    )


def dead_letter_to_row(record: dict[str, Any]) -> tuple[Any, ...]:
    failed: datetime = record["failed_at"]
    return (
        failed,
        int(failed.timestamp() * 1000),
        record["stage"],
        record["reason_code"],
        record["detail"],
        record["topic"],
        record["partition"],
        record["offset"],
        str(record["notification_id"] or ""),
        record["original_key"] or b"",
        record["original_value"] or b"",
    )


@dataclass(frozen=True)
class Projection:
    """How one topic lands in one ClickHouse table."""

    topic: TopicSpec
    schema: str
    table: str
    columns: tuple[str, ...]
    to_row: Callable[[dict[str, Any]], tuple[Any, ...]]

    @property
    def insert(self) -> str:
        return f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES"


EVENTS_PROJECTION = Projection(EVENTS, "LifecycleEvent", "notification_events", COLUMNS, event_to_row)
DEAD_LETTERS_PROJECTION = Projection(DLQ, "DeadLetter", "dead_letters", DEAD_LETTER_COLUMNS, dead_letter_to_row)
PROJECTIONS = {p.topic.name: p for p in (EVENTS_PROJECTION, DEAD_LETTERS_PROJECTION)}


def undecodable_dead_letter(record: ConsumerRecord, error: str, key: bytes | None, value: bytes) -> dict[str, Any]:
    # A header may have no value; the DeadLetter schema's map holds bytes.
    return dead_letter(
        stage="track", reason_code="undecodable", detail=error, topic=record.topic, partition=record.partition,
        offset=record.offset, key=key, value=value, headers={name: data or b"" for name, data in record.headers},
    )


def next_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offsets to commit after these records: last offset + 1 per partition."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


class ClickHouseWriter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Client | None = None

    def insert(self, batches: dict[Projection, list[tuple[Any, ...]]]) -> None:
        """One INSERT per table. A retry after a partial failure re-inserts rows that made it; the
        tables collapse them."""
        if self.client is None:
            self.client = connect(self.settings)
        try:
            for projection, rows in batches.items():
                if rows:
                    self.client.execute(projection.insert, rows)
        except Exception:
            self.client.disconnect()
            self.client = None  # reconnect on the next try
            raise


class EventSink(Service):
    """Consumes herald.events and herald.dlq and writes them to ClickHouse; see the module docstring."""

    def __init__(self, settings: Settings, group_id: str, serde: AvroSerde | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.group_id = group_id
        self.serde = serde or default_serde()
        self.writer = ClickHouseWriter(settings)
        self.rows_written = 0

    async def on_start(self) -> None:
        # Kafka clients are made here, inside the running loop, not at import.
        settings = self.settings
        self.consumer = AIOKafkaConsumer(
            *PROJECTIONS,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.sink_batch_size,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                         enable_idempotence=True, max_request_size=settings.max_message_bytes)
        await self.producer.start()
        await self.consumer.start()

    async def on_stop(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    @Service.task
    async def _run(self) -> None:
        while not self.should_stop:
            records = await self.collect()
            if not records:
                continue
            batches, dead = self.process(records)
            await self.dead_letter(dead)
            await self.write(batches)
            await self.commit(records)

    async def collect(self) -> list[ConsumerRecord]:
        """Up to sink_batch_size records, waiting at most sink_flush_seconds once the first arrived."""
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + 1.0
        while len(records) < self.settings.sink_batch_size and not self.should_stop:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            fetched = await self.consumer.getmany(
                timeout_ms=int(timeout * 1000), max_records=self.settings.sink_batch_size - len(records)
            )
            if fetched and not records:
                deadline = time.monotonic() + self.settings.sink_flush_seconds
            for batch in fetched.values():
                records.extend(batch)
        return records

    def process(self, records: list[ConsumerRecord]) -> tuple[dict[Projection, list[tuple[Any, ...]]], list[dict[str, Any]]]:
        """Rows per table, and dead letters for the events that do not decode. An undecodable dead
        letter cannot go back to herald.dlq (it would loop): its bytes become a dead_letters row."""
        batches: dict[Projection, list[tuple[Any, ...]]] = {p: [] for p in PROJECTIONS.values()}
        dead = []
        for record in records:
            projection = PROJECTIONS[record.topic]
            for key, value in self.values(record, projection):
                try:
                    batches[projection].append(projection.to_row(self.serde.decode(value, projection.schema)))
                except SchemaDecodeError as exc:
                    letter = undecodable_dead_letter(record, str(exc), key, value)
                    if projection is DEAD_LETTERS_PROJECTION:
                        batches[projection].append(dead_letter_to_row(letter))
                    else:
                        dead.append(letter)
        return batches, dead

    def values(self, record: ConsumerRecord, projection: Projection) -> list[tuple[bytes | None, bytes]]:
        """The (key, value) records a message holds: many in a RecordBundle, else itself."""
        if not projection.topic.bundled:
            return [(record.key, record.value)]
        try:
            return unbundle(self.serde, record.value)
        except SchemaDecodeError:  # the whole message then fails to decode below, and is dead-lettered whole
            return [(record.key, record.value or b"")]

    async def dead_letter(self, dead: list[dict[str, Any]]) -> None:
        for record in dead:
            log.warning("sink: dead-lettering %s@%s: %s", record["topic"], record["offset"], record["detail"])
            await self.producer.send_and_wait(DLQ.name, self.serde.encode("DeadLetter", record), key=record["original_key"])

    async def write(self, batches: dict[Projection, list[tuple[Any, ...]]]) -> None:
        """Insert the batch, retrying until it succeeds; partitions stay paused while it fails."""
        delay = 0.5
        rows = sum(len(r) for r in batches.values())
        while True:
            try:
                await asyncio.to_thread(self.writer.insert, batches)
                break
            except Exception as exc:  # any ClickHouse or network error: wait, never drop
                log.warning("sink: insert of %d rows failed (%s); retrying in %.1fs", rows, exc, delay)
                self.consumer.pause(*self.consumer.assignment())
                # Polling paused partitions returns nothing but keeps this consumer in its group.
                await self.consumer.getmany(timeout_ms=int(delay * 1000))
                delay = min(delay * 2, self.settings.sink_retry_max_seconds)
        self.consumer.resume(*self.consumer.paused())
        self.rows_written += rows

    async def commit(self, records: list[ConsumerRecord]) -> None:
        try:
            await self.consumer.commit(next_offsets(records))
        except CommitFailedError as exc:
            # The partitions moved to another consumer, which re-reads from the last commit;
            # the rows written twice collapse on event_id.
            log.warning("sink: commit failed after a rebalance: %s", exc)
