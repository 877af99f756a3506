"""The ClickHouse sink on the real broker and server: counts exact, replays idempotent, outages lossless,
and a value that does not fit its column dead-lettered alone, whether the range check or ClickHouse
finds it, while the rest of the batch is written and committed."""

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiokafka import TopicPartition as AioTopicPartition
from clickhouse_driver import Client
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

from schemas.serde import AvroSerde
from sinks import event_sink
from sinks.event_sink import DEAD_LETTER_COLUMNS, PROJECTIONS, EventSink
from streams.codec import bundle
from streams.dead_letters import dead_letter
from streams.settings import REPO_ROOT, Settings
from streams.topics import DLQ, EVENTS
from tests.integration.helpers import eventually

N = 10_000


def lifecycle_events(n: int, tenant: str) -> list[dict[str, Any]]:
    now = datetime.now(timezone.utc)
    return [
        {
            "event_id": uuid.uuid4(), "notification_id": uuid.uuid4(), "tenant": tenant,
            "status": "sent", "stage": "deliver", "channel": "email", "provider": "smtp",
            "template_id": "welcome", "category": "transactional", "priority": "normal", "attempt": 0,
            "error_code": None, "detail": None, "latency_ms": i % 500, "occurred_at": now,
        }
        for i in range(n)
    ]


def produce(producer: KafkaProducer, serde: AvroSerde, events: list[dict[str, Any]]) -> None:
    for event in events:
        producer.send(EVENTS.name, key=event["notification_id"].bytes, value=serde.encode("LifecycleEvent", event))
    producer.flush()


def count(clickhouse: Client, tenant: str) -> int:
    return clickhouse.execute(
        "SELECT count() FROM notification_events FINAL WHERE tenant = %(tenant)s", {"tenant": tenant}
    )[0][0]


def group_at_the_end(kafka: str) -> str:
    """A consumer group of its own, its offsets committed at the end of the sink's topics: the sink
    under test then reads what the test produces, all of it, whatever else (a running pipeline's
    track worker) reads the same topics in the usual group."""
    group = f"herald-test-sink-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for topic in PROJECTIONS for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in consumer.end_offsets(partitions).items()})
    finally:
        consumer.close()
    return group


@pytest.fixture
async def sink(settings: Settings, kafka: str, clickhouse: Client) -> AsyncIterator[EventSink]:
    service = EventSink(settings, group_at_the_end(kafka))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
def tenant() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def test_sink_writes_every_event_once(
    sink: EventSink, producer: KafkaProducer, serde: AvroSerde, clickhouse: Client, tenant: str
) -> None:
    events = lifecycle_events(N, tenant)
    produce(producer, serde, events)
    assert await eventually(lambda: count(clickhouse, tenant), N, timeout=60) == N

    # The same 10,000 again (a replay): still 10,000. A marker sent after them proves the sink
    # has consumed the replay before we count.
    produce(producer, serde, events)
    marker = lifecycle_events(1, tenant + "-marker")
    produce(producer, serde, marker)
    assert await eventually(lambda: count(clickhouse, tenant + "-marker"), 1, timeout=60) == 1
    assert count(clickhouse, tenant) == N


async def test_sink_rides_out_a_clickhouse_outage(
    sink: EventSink, producer: KafkaProducer, serde: AvroSerde, clickhouse: Client, tenant: str
) -> None:
    first, second = lifecycle_events(N // 2, tenant), lifecycle_events(N // 2, tenant)
    before = sink.rows_written
    produce(producer, serde, first)
    assert await eventually(lambda: count(clickhouse, tenant), N // 2, timeout=60) == N // 2
    # This sink's own writes, not only the count: a running pipeline's track worker (the usual
    # group) may have stored them first, and this sink's insert must not land during the outage.
    assert await eventually(lambda: sink.rows_written - before >= N // 2, True, timeout=60)

    clickhouse_sh = str(REPO_ROOT / "deploy/local/clickhouse.sh")
    subprocess.run([clickhouse_sh, "stop"], check=True)
    try:
        produce(producer, serde, second)
        written = sink.rows_written
        await eventually(lambda: sink.rows_written > written, True, timeout=5)
        assert sink.rows_written == written, "the sink claimed a write while ClickHouse was down"
    finally:
        subprocess.run([clickhouse_sh, "start"], check=True)
    clickhouse.disconnect()
    assert await eventually(lambda: count(clickhouse, tenant), N, timeout=90) == N


# --- values that do not fit their columns ------------------------------------------------------------------


def produce_bundle(producer: KafkaProducer, serde: AvroSerde, events: list[dict[str, Any]]) -> tuple[int, int]:
    """The events as one RecordBundle on herald.events, as a stage sends them; returns (partition, offset)."""
    records = [(e["notification_id"].bytes, serde.encode("LifecycleEvent", e)) for e in events]
    meta = producer.send(EVENTS.name, key=records[0][0], value=bundle(serde, records)).get(timeout=30)
    return meta.partition, meta.offset


def dlq_end_offsets(kafka: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(DLQ.name, p) for p in consumer.partitions_for_topic(DLQ.name)]
        return consumer.end_offsets(partitions)
    finally:
        consumer.close()


def read_dead_letters(kafka: str, serde: AvroSerde, since: dict[TopicPartition, int],
                      wanted: Callable[[dict[str, Any]], bool], n: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The first `n` DeadLetters on herald.dlq after `since` for which `wanted` holds (fewer after `timeout`)."""
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=1000)
    consumer.assign(list(since))
    for tp, offset in since.items():
        consumer.seek(tp, offset)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < n and time.monotonic() < deadline:
            for message in consumer:
                letter = serde.decode(message.value, "DeadLetter")
                if wanted(letter):
                    found.append(letter)
                    if len(found) == n:
                        break
    finally:
        consumer.close()
    return found


async def committed_past(sink: EventSink, topic: str, partition: int, offset: int, timeout: float = 60) -> bool:
    """Whether the sink's group commits past `offset` within `timeout` seconds."""
    tp = AioTopicPartition(topic, partition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await sink.consumer.committed(tp) or -1) > offset:
            return True
        await asyncio.sleep(0.5)
    return False


def stored_dead_letters(clickhouse: Client, notification_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = clickhouse.execute(f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM dead_letters FINAL "
                              "WHERE notification_id = %(id)s ORDER BY failed_at_ms", {"id": str(notification_id)})
    return [dict(zip(DEAD_LETTER_COLUMNS, row, strict=True)) for row in rows]


async def test_an_event_that_does_not_fit_is_dead_lettered_and_the_rest_written_and_committed(
    sink: EventSink, producer: KafkaProducer, serde: AvroSerde, clickhouse: Client, tenant: str, kafka: str
) -> None:
    events = lifecycle_events(20, tenant)
    events[7] = bad = events[7] | {"attempt": 70000}  # a valid Avro int; notification_events.attempt is UInt16
    since = dlq_end_offsets(kafka)
    partition, offset = produce_bundle(producer, serde, events)

    assert await eventually(lambda: count(clickhouse, tenant), 19, timeout=60) == 19
    assert await committed_past(sink, EVENTS.name, partition, offset), "the sink did not commit past the batch"

    [letter] = await asyncio.to_thread(read_dead_letters, kafka, serde, since,
                                       lambda d: d["notification_id"] == bad["notification_id"], 1)
    assert (letter["stage"], letter["reason_code"]) == ("track", "unstorable")
    assert letter["detail"] == \
        "notification_events: attempt=70000 does not fit notification_events.attempt UInt16 (0..65535)"
    assert (letter["topic"], letter["partition"], letter["offset"]) == (EVENTS.name, partition, offset)
    assert serde.decode(letter["original_value"], "LifecycleEvent")["event_id"] == bad["event_id"]
    # ... and from herald.dlq the sink stores it in dead_letters, like any dead letter.
    assert await eventually(lambda: {d["reason_code"] for d in stored_dead_letters(clickhouse, bad["notification_id"])},
                            {"unstorable"}, timeout=60) == {"unstorable"}
    assert count(clickhouse, tenant) == 19


async def test_rows_clickhouse_refuses_are_isolated_when_the_range_check_misses_them(
    sink: EventSink, producer: KafkaProducer, serde: AvroSerde, clickhouse: Client, tenant: str, kafka: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No pre-check: every value reaches the INSERT, and clickhouse-driver fails to encode the block.
    monkeypatch.setattr(event_sink, "fits", lambda table, column, field, value: value)
    events = lifecycle_events(40, tenant)
    events[3] = too_many = events[3] | {"attempt": 70000}
    events[30] = too_old = events[30] | {"occurred_at": datetime(1900, 1, 1, tzinfo=timezone.utc)}
    letter_id = uuid.uuid4()
    bad_letter = dead_letter(stage="deliver", reason_code="retries_exhausted", detail="test", topic="herald.retry.5s",
                             partition=2**40, offset=1, key=b"k", value=b"v", notification_id=letter_id)
    since = dlq_end_offsets(kafka)
    written = sink.rows_written
    partition, offset = produce_bundle(producer, serde, events)
    dlq_meta = producer.send(DLQ.name, key=b"k", value=serde.encode("DeadLetter", bad_letter)).get(timeout=30)

    assert await eventually(lambda: count(clickhouse, tenant), 38, timeout=60) == 38
    assert await committed_past(sink, EVENTS.name, partition, offset), "the sink did not commit past the batch"
    assert await committed_past(sink, DLQ.name, dlq_meta.partition, dlq_meta.offset)
    assert sink.rows_written - written >= 38 and sink.rows_refused >= 3

    bad_ids = {too_many["notification_id"], too_old["notification_id"]}
    refused = "notification_events: ClickHouse refused the row: TypeMismatchError"
    # (A track worker of a running pipeline, in its own group, dead-letters them too, after its own
    # range check: those letters say "does not fit" instead.)
    letters = await asyncio.to_thread(read_dead_letters, kafka, serde, since,
                                      lambda d: d["notification_id"] in bad_ids and d["detail"].startswith(refused), 2)
    by_id = {letter["notification_id"]: letter for letter in letters}
    assert set(by_id) == bad_ids
    for letter in letters:
        assert (letter["stage"], letter["reason_code"]) == ("track", "unstorable")
    assert "Column attempt" in by_id[too_many["notification_id"]]["detail"]
    assert "Column event_time" in by_id[too_old["notification_id"]]["detail"]

    # The dead letter whose partition Int32 cannot hold is not sent back to herald.dlq: the sink stores
    # a row of its own for it, with the Kafka coordinates and the original bytes.
    def sinks_rows() -> list[tuple]:
        return [(d["stage"], d["reason_code"], d["topic"], d["partition"], d["offset"])
                for d in stored_dead_letters(clickhouse, letter_id) if "ClickHouse refused the row" in d["detail"]]

    expected = [("track", "unstorable", DLQ.name, dlq_meta.partition, dlq_meta.offset)]
    assert await eventually(sinks_rows, expected, timeout=60) == expected


async def test_the_edges_of_every_range_are_stored(
    sink: EventSink, producer: KafkaProducer, serde: AvroSerde, clickhouse: Client, tenant: str
) -> None:
    """What the range check lets through, this ClickHouse stores: the bounds are not too wide."""
    first = datetime(1970, 1, 1, tzinfo=timezone.utc)
    last = datetime(2105, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc)
    edges = [{"attempt": 65535, "latency_ms": 2**63 - 1, "occurred_at": first},
             {"attempt": 0, "latency_ms": -(2**63), "occurred_at": last}]
    events = [e | edge for e, edge in zip(lifecycle_events(2, tenant), edges, strict=True)]
    letter_id = uuid.uuid4()
    letters = [dead_letter(stage="deliver", reason_code="edge", detail=str(i), topic="herald.retry.5s",
                           partition=partition, offset=offset, notification_id=letter_id) | {"failed_at": at}
               for i, (partition, offset, at) in enumerate([(-(2**31), -(2**63), first), (2**31 - 1, 2**63 - 1, last)])]
    produce_bundle(producer, serde, events)
    for letter in letters:
        producer.send(DLQ.name, value=serde.encode("DeadLetter", letter))
    producer.flush()

    assert await eventually(lambda: count(clickhouse, tenant), 2, timeout=60) == 2
    rows = clickhouse.execute(
        "SELECT attempt, latency_ms, toUnixTimestamp(event_time), event_time_ms, toYYYYMMDD(event_time) "
        "FROM notification_events FINAL WHERE tenant = %(tenant)s ORDER BY attempt DESC", {"tenant": tenant})
    last_ms = (last - first) // timedelta(milliseconds=1)
    assert rows == [(65535, 2**63 - 1, 0, 0, 19700101), (0, -(2**63), last_ms // 1000, last_ms, 21051231)]
    stored = await eventually(lambda: [(d["partition"], d["offset"], d["failed_at_ms"])
                                       for d in stored_dead_letters(clickhouse, letter_id)],
                              [(-(2**31), -(2**63), 0), (2**31 - 1, 2**63 - 1, last_ms)], timeout=60)
    assert stored == [(-(2**31), -(2**63), 0), (2**31 - 1, 2**63 - 1, last_ms)]
