"""The ClickHouse sink on the real broker and server: counts exact, replays idempotent, outages lossless."""

import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest
from clickhouse_driver import Client
from kafka import KafkaProducer

from schemas.serde import AvroSerde
from agents.track import TRACK
from sinks.event_sink import EventSink
from streams.settings import REPO_ROOT, Settings
from streams.topics import EVENTS
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


@pytest.fixture
async def sink(settings: Settings, kafka: str, clickhouse: Client) -> AsyncIterator[EventSink]:
    service = EventSink(settings, TRACK.group_id(settings))
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
    produce(producer, serde, first)
    assert await eventually(lambda: count(clickhouse, tenant), N // 2, timeout=60) == N // 2

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
