"""The ClickHouse sink: herald.events → herald.notification_events, in four plain steps.

1. process: one LifecycleEvent → one row (`event_to_row`, pure).
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
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from clickhouse_driver import Client
from mode import Service

from schemas.serde import AvroSerde, SchemaDecodeError, default_serde
from sinks.clickhouse_client import connect
from streams.dead_letters import dead_letter
from streams.settings import Settings
from streams.topics import DLQ, EVENTS

log = logging.getLogger(__name__)

COLUMNS = (
    "event_id", "notification_id", "tenant", "stage", "status", "channel", "provider", "template",
    "category", "priority", "attempt", "error_code", "detail", "latency_ms", "event_time", "event_time_ms",
)
INSERT = f"INSERT INTO notification_events ({', '.join(COLUMNS)}) VALUES"
GROUP_ID = "herald-clickhouse-sink"


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

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        if self.client is None:
            self.client = connect(self.settings)
        try:
            self.client.execute(INSERT, rows)
        except Exception:
            self.client.disconnect()
            self.client = None  # reconnect on the next try
            raise


class EventSink(Service):
    """Consumes herald.events and writes it to ClickHouse; see the module docstring."""

    def __init__(self, settings: Settings, serde: AvroSerde | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.serde = serde or default_serde()
        self.writer = ClickHouseWriter(settings)
        self.rows_written = 0

    async def on_start(self) -> None:
        # Kafka clients are made here, inside the running loop, not at import.
        settings = self.settings
        self.consumer = AIOKafkaConsumer(
            EVENTS.name,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=GROUP_ID,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.sink_batch_size,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
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
            rows, dead = self.process(records)
            await self.dead_letter(dead)
            await self.write(rows)
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

    def process(self, records: list[ConsumerRecord]) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
        """Rows for ClickHouse, and dead letters for the records that do not decode."""
        rows, dead = [], []
        for record in records:
            try:
                rows.append(event_to_row(self.serde.decode(record.value, "LifecycleEvent")))
            except SchemaDecodeError as exc:
                dead.append(dead_letter(
                    stage="track", reason_code="undecodable", detail=str(exc), topic=record.topic,
                    partition=record.partition, offset=record.offset, key=record.key, value=record.value,
                    headers=dict(record.headers),
                ))
        return rows, dead

    async def dead_letter(self, dead: list[dict[str, Any]]) -> None:
        for record in dead:
            log.warning("sink: dead-lettering %s@%s: %s", record["topic"], record["offset"], record["detail"])
            await self.producer.send_and_wait(DLQ.name, self.serde.encode("DeadLetter", record), key=record["original_key"])

    async def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert the batch, retrying until it succeeds; partitions stay paused while it fails."""
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(self.writer.insert, rows)
                break
            except Exception as exc:  # any ClickHouse or network error: wait, never drop
                log.warning("sink: insert of %d rows failed (%s); retrying in %.1fs", len(rows), exc, delay)
                self.consumer.pause(*self.consumer.assignment())
                # Polling paused partitions returns nothing but keeps this consumer in its group.
                await self.consumer.getmany(timeout_ms=int(delay * 1000))
                delay = min(delay * 2, self.settings.sink_retry_max_seconds)
        self.consumer.resume(*self.consumer.paused())
        self.rows_written += len(rows)

    async def commit(self, records: list[ConsumerRecord]) -> None:
        try:
            await self.consumer.commit(next_offsets(records))
        except CommitFailedError as exc:
            # The partitions moved to another consumer, which re-reads from the last commit;
            # the rows written twice collapse on event_id.
            log.warning("sink: commit failed after a rebalance: %s", exc)
