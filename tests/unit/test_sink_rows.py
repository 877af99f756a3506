"""sinks/event_sink.py: the pure steps of the ClickHouse sink, event → row and records → offsets."""

import re
import uuid
from collections import namedtuple
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from streams.stage import lifecycle_event
from schemas.serde import SCHEMA_DIR, default_serde
from sinks.event_sink import COLUMNS, EVENTS_PROJECTION, event_to_row, next_offsets
from tests.unit import records

AT = datetime(2024, 5, 6, 7, 8, 9, 456000, tzinfo=UTC)
AT_MS = 1714979289456


def event(**overrides: object) -> dict:
    """A LifecycleEvent as the sink decodes it."""
    return {
        "event_id": uuid.UUID(int=11), "notification_id": uuid.UUID(int=22), "tenant": "acme", "status": "failed",
        "stage": "deliver", "channel": "email", "provider": "smtp", "template_id": "welcome",
        "category": "transactional", "priority": "high", "attempt": 3, "error_code": "smtp_550",
        "detail": "no such user", "latency_ms": 812, "occurred_at": AT,
    } | overrides


def test_row_follows_columns() -> None:
    row = dict(zip(COLUMNS, event_to_row(event()), strict=True))
    assert row == {
        "event_id": uuid.UUID(int=11), "notification_id": uuid.UUID(int=22), "tenant": "acme", "stage": "deliver",
        "status": "failed", "channel": "email", "provider": "smtp", "template": "welcome",
        "category": "transactional", "priority": "high", "attempt": 3, "error_code": "smtp_550",
        "detail": "no such user", "latency_ms": 812, "event_time": AT, "event_time_ms": AT_MS,
    }


def test_columns_match_the_migration() -> None:
    ddl = (SCHEMA_DIR.parent / "sinks" / "migrations" / "0001_notification_events.up.sql").read_text()
    table = ddl[ddl.index("CREATE TABLE"):]
    body = table[table.index("(") + 1:table.index("ENGINE")]
    declared = tuple(re.findall(r"^\s*(\w+)\s+\w", body, flags=re.MULTILINE))
    assert declared == COLUMNS
    assert EVENTS_PROJECTION.insert == f"INSERT INTO notification_events ({', '.join(COLUMNS)}) VALUES"


def test_missing_strings_become_empty() -> None:
    row = dict(zip(COLUMNS, event_to_row(event(channel=None, provider=None, template_id=None, category=None,
                                                 error_code=None, detail=None))))
    for column in ("channel", "provider", "template", "category", "error_code", "detail"):
        assert row[column] == "", column


def test_missing_latency_stays_null() -> None:
    row = dict(zip(COLUMNS, event_to_row(event(latency_ms=None))))
    assert row["latency_ms"] is None  # the column is Nullable(Int64)


@pytest.mark.parametrize("ms", [0, 1, 7, 123, 456, 999])
def test_event_time_ms_is_exact(ms: int) -> None:
    occurred = datetime(2025, 1, 31, 23, 59, 59, ms * 1000, tzinfo=UTC)
    row = dict(zip(COLUMNS, event_to_row(event(occurred_at=occurred))))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert row["event_time_ms"] == (occurred - epoch) // timedelta(milliseconds=1)
    assert row["event_time"] == occurred


def test_row_of_a_decoded_lifecycle_event() -> None:
    serde = default_serde()
    emitted = lifecycle_event(records.notification(), "rejected", "validate", error_code="missing_variable",
                              detail="needs: name", at=AT)
    decoded = serde.decode(serde.encode("LifecycleEvent", emitted), "LifecycleEvent")
    row = dict(zip(COLUMNS, event_to_row(decoded), strict=True))
    assert row["event_id"] == emitted["event_id"]
    assert row["channel"] == "" and row["provider"] == ""
    assert row["status"] == "rejected" and row["stage"] == "validate"
    assert row["event_time_ms"] == AT_MS


# --- next_offsets ----------------------------------------------------------------------------------------


def consumer_record(topic: str, partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic=topic, partition=partition, offset=offset, timestamp=0, timestamp_type=0, key=None,
                          value=b"", checksum=None, serialized_key_size=0, serialized_value_size=0, headers=[])


def test_next_offsets_is_last_plus_one_per_partition() -> None:
    batch = [consumer_record("herald.events", p, o) for p, o in [(0, 10), (1, 3), (0, 11), (0, 12), (1, 4)]]
    assert next_offsets(batch) == {TopicPartition("herald.events", 0): 13, TopicPartition("herald.events", 1): 5}


def test_next_offsets_does_not_depend_on_order() -> None:
    batch = [consumer_record("herald.events", 0, o) for o in (12, 10, 11)]
    assert next_offsets(batch) == {TopicPartition("herald.events", 0): 13}


def test_next_offsets_separates_topics() -> None:
    batch = [consumer_record("a", 0, 5), consumer_record("b", 0, 9)]
    assert next_offsets(batch) == {TopicPartition("a", 0): 6, TopicPartition("b", 0): 10}


def test_next_offsets_of_offset_zero_is_one() -> None:
    assert next_offsets([consumer_record("herald.events", 2, 0)]) == {TopicPartition("herald.events", 2): 1}


def test_next_offsets_of_nothing_is_empty() -> None:
    assert next_offsets([]) == {}


def test_next_offsets_takes_anything_with_topic_partition_offset() -> None:
    Record = namedtuple("Record", "topic partition offset")
    assert next_offsets([Record("t", 1, 41)]) == {TopicPartition("t", 1): 42}
