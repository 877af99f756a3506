"""sinks/event_sink.py: the pure steps of the ClickHouse sink, event → row (with the range of every
numeric and time column), records → rows and dead letters, and records → offsets."""

import re
import uuid
from collections import namedtuple
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from streams.stage import lifecycle_event
from schemas.serde import SCHEMA_DIR
from streams.codec import default_serde
from sinks.event_sink import (
    COLUMN_RANGES, COLUMNS, DEAD_LETTER_COLUMNS, DEAD_LETTERS_PROJECTION, EVENTS_PROJECTION, Unstorable,
    dead_letter_to_row, event_to_row, next_offsets, process,
)
from streams.codec import bundle
from streams.dead_letters import dead_letter
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


# --- the range of every numeric and time column -----------------------------------------------------

MIGRATIONS = SCHEMA_DIR.parent / "sinks" / "migrations"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_SECOND = datetime(2105, 12, 31, 23, 59, 59, tzinfo=UTC)  # DateTime's last second on ClickHouse 18.16
MS = timedelta(milliseconds=1)


def column_types(migration: str) -> dict[str, str]:
    ddl = (MIGRATIONS / migration).read_text()
    table = ddl[ddl.index("CREATE TABLE"):]
    body = table[table.index("(") + 1:table.index("ENGINE")]
    return dict(re.findall(r"^\s*(\w+)\s+([\w()]+)", body, flags=re.MULTILINE))


@pytest.mark.parametrize(("table", "migration", "columns"), [
    ("notification_events", "0001_notification_events.up.sql", COLUMNS),
    ("dead_letters", "0002_dead_letters.up.sql", DEAD_LETTER_COLUMNS),
])
def test_every_column_that_can_overflow_has_its_range(table: str, migration: str, columns: tuple[str, ...]) -> None:
    types = column_types(migration)
    assert tuple(types) == columns
    # String has no length limit and a decoded Avro uuid is always a UUID: everything else is checked,
    # with the range of its own type.
    bounded = {c: t.removeprefix("Nullable(").rstrip(")") for c, t in types.items() if t not in ("String", "UUID")}
    assert {c: r.type for c, r in COLUMN_RANGES[table].items()} == bounded


def unstorable(call: object, *args: object) -> str:
    with pytest.raises(Unstorable) as caught:
        call(*args)  # type: ignore[operator]
    return str(caught.value)


@pytest.mark.parametrize("attempt", [0, 1, 65535])
def test_attempt_up_to_uint16_max_fits(attempt: int) -> None:
    assert dict(zip(COLUMNS, event_to_row(event(attempt=attempt))))["attempt"] == attempt


@pytest.mark.parametrize("attempt", [65536, 70000, 2**31 - 1, 2**40, -1, -(2**31)])
def test_attempt_outside_uint16_is_unstorable(attempt: int) -> None:
    assert unstorable(event_to_row, event(attempt=attempt)) == \
        f"attempt={attempt!r} does not fit notification_events.attempt UInt16 (0..65535)"


@pytest.mark.parametrize("latency", [None, 0, -1, 2**63 - 1, -(2**63)])
def test_latency_within_int64_fits(latency: int | None) -> None:
    assert dict(zip(COLUMNS, event_to_row(event(latency_ms=latency))))["latency_ms"] == latency


@pytest.mark.parametrize("latency", [2**63, -(2**63) - 1, 2**70])
def test_latency_outside_int64_is_unstorable(latency: int) -> None:
    assert "notification_events.latency_ms Int64" in unstorable(event_to_row, event(latency_ms=latency))


@pytest.mark.parametrize("occurred", [EPOCH, EPOCH + MS, LAST_SECOND, LAST_SECOND + 999 * MS, AT])
def test_occurred_at_within_datetime_fits(occurred: datetime) -> None:
    row = dict(zip(COLUMNS, event_to_row(event(occurred_at=occurred))))
    assert row["event_time"] == occurred
    assert row["event_time_ms"] == (occurred - EPOCH) // MS


@pytest.mark.parametrize("occurred", [
    EPOCH - MS,                                     # the last millisecond before 1970
    datetime(1900, 1, 1, tzinfo=UTC),               # far past (a negative timestamp-millis)
    datetime(1, 1, 1, tzinfo=UTC),                  # Avro's most negative that Python can hold
    LAST_SECOND + timedelta(seconds=1),             # 2106-01-01
    datetime(2106, 2, 7, 6, 28, 16, tzinfo=UTC),    # past UInt32 seconds
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),  # far future
])
def test_occurred_at_outside_datetime_is_unstorable(occurred: datetime) -> None:
    assert unstorable(event_to_row, event(occurred_at=occurred)) == (
        f"occurred_at={occurred.isoformat()} does not fit notification_events.event_time "
        "DateTime (1970-01-01T00:00:00Z..2105-12-31T23:59:59Z)")


def test_a_naive_occurred_at_is_unstorable() -> None:
    unstorable(event_to_row, event(occurred_at=AT.replace(tzinfo=None)))


def test_an_id_that_is_not_a_uuid_is_unstorable() -> None:
    assert "notification_events.event_id UUID" in unstorable(event_to_row, event(event_id="not-a-uuid"))


def letter(**overrides: object) -> dict:
    """A DeadLetter as the sink decodes it."""
    return dead_letter(stage="deliver", reason_code="retries_exhausted", detail="5 attempts", topic="herald.retry.300s",
                       partition=3, offset=42, key=b"k", value=b"v", notification_id=uuid.UUID(int=22)) \
        | {"failed_at": AT} | overrides


def test_dead_letter_row_follows_columns() -> None:
    row = dict(zip(DEAD_LETTER_COLUMNS, dead_letter_to_row(letter()), strict=True))
    assert row == {
        "failed_at": AT, "failed_at_ms": AT_MS, "stage": "deliver", "reason_code": "retries_exhausted",
        "detail": "5 attempts", "topic": "herald.retry.300s", "partition": 3, "offset": 42,
        "notification_id": str(uuid.UUID(int=22)), "original_key": b"k", "original_value": b"v",
    }


@pytest.mark.parametrize(("field", "value"), [
    ("partition", -(2**31)), ("partition", 2**31 - 1), ("partition", -1),
    ("offset", -(2**63)), ("offset", 2**63 - 1), ("offset", -1),
    ("failed_at", EPOCH), ("failed_at", LAST_SECOND + 999 * MS),
])
def test_dead_letter_values_within_their_columns_fit(field: str, value: object) -> None:
    row = dict(zip(DEAD_LETTER_COLUMNS, dead_letter_to_row(letter(**{field: value}))))
    assert row[field] == value


@pytest.mark.parametrize(("field", "value", "column"), [
    ("partition", 2**31, "partition Int32"), ("partition", -(2**31) - 1, "partition Int32"),
    ("offset", 2**63, "offset Int64"), ("offset", -(2**63) - 1, "offset Int64"),
    ("failed_at", EPOCH - MS, "failed_at DateTime"),
    ("failed_at", datetime(3000, 1, 1, tzinfo=UTC), "failed_at DateTime"),
])
def test_dead_letter_values_outside_their_columns_are_unstorable(field: str, value: object, column: str) -> None:
    assert f"dead_letters.{column}" in unstorable(dead_letter_to_row, letter(**{field: value}))


# --- process: records → rows and dead letters --------------------------------------------------------


def message(topic: str, value: bytes, key: bytes | None = b"message-key", offset: int = 7,
            headers: list | None = None) -> ConsumerRecord:
    return ConsumerRecord(topic=topic, partition=1, offset=offset, timestamp=0, timestamp_type=0, key=key,
                          value=value, checksum=None, serialized_key_size=0, serialized_value_size=len(value),
                          headers=headers or [])


def zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63) if n >= 0 else ((-n) << 1) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_a_bundle_with_an_event_that_does_not_fit_dead_letters_it_alone() -> None:
    serde = default_serde()
    good = [event(event_id=uuid.UUID(int=i), attempt=i) for i in range(3)]
    bad = event(event_id=uuid.UUID(int=99), notification_id=uuid.UUID(int=98), attempt=70000)
    encoded = [(e["notification_id"].bytes, serde.encode("LifecycleEvent", e)) for e in (good[0], bad, *good[1:])]
    record = message("herald.events", bundle(serde, encoded), headers=[("trace", None), ("tenant", b"acme")])

    batches, dead, skipped = process([record], serde)

    assert [row.values for row in batches[EVENTS_PROJECTION]] == [event_to_row(e) for e in good]
    assert batches[DEAD_LETTERS_PROJECTION] == [] and skipped == 0
    [letter_] = dead
    assert letter_["reason_code"] == "unstorable" and letter_["stage"] == "track"
    assert letter_["detail"] == \
        "notification_events: attempt=70000 does not fit notification_events.attempt UInt16 (0..65535)"
    assert (letter_["original_key"], letter_["original_value"]) == encoded[1]
    assert (letter_["topic"], letter_["partition"], letter_["offset"]) == ("herald.events", 1, 7)
    assert letter_["notification_id"] == uuid.UUID(int=98)
    assert letter_["headers"] == {"trace": b"", "tenant": b"acme"}  # a header without a value
    serde.encode("DeadLetter", letter_)  # and it is a valid DeadLetter


@pytest.mark.parametrize("millis", [-(2**40), 2**42, -1])
def test_an_occurred_at_avro_can_hold_but_datetime_cannot_is_dead_lettered(millis: int) -> None:
    serde = default_serde()
    at_epoch = serde.encode("LifecycleEvent", event(occurred_at=EPOCH))
    assert at_epoch.endswith(b"\x00")  # occurred_at is the last field: its zigzag varint 0
    value = at_epoch[:-1] + zigzag(millis)
    batches, dead, _ = process([message("herald.events", value)], serde)
    assert batches[EVENTS_PROJECTION] == []
    assert [(d["reason_code"], d["original_value"]) for d in dead] == [("unstorable", value)]
    assert "occurred_at=" in dead[0]["detail"] and "event_time DateTime" in dead[0]["detail"]


@pytest.mark.parametrize("millis", [2**62, -(2**62)])
def test_an_occurred_at_beyond_python_datetimes_is_undecodable(millis: int) -> None:
    serde = default_serde()
    value = serde.encode("LifecycleEvent", event(occurred_at=EPOCH))[:-1] + zigzag(millis)
    batches, dead, _ = process([message("herald.events", value)], serde)
    assert batches[EVENTS_PROJECTION] == []
    assert [d["reason_code"] for d in dead] == ["undecodable"]


def test_a_dead_letter_that_does_not_fit_becomes_a_row_of_the_sink_not_a_new_dead_letter() -> None:
    serde = default_serde()
    value = serde.encode("DeadLetter", letter(partition=2**40))  # Avro int, but fastavro does not check
    batches, dead, skipped = process([message("herald.dlq", value, key=b"k", offset=12)], serde)
    assert dead == [] and skipped == 0  # nothing goes back to herald.dlq: it would loop
    [row] = batches[DEAD_LETTERS_PROJECTION]
    stored = dict(zip(DEAD_LETTER_COLUMNS, row.values, strict=True))
    assert (stored["stage"], stored["reason_code"]) == ("track", "unstorable")
    assert (stored["topic"], stored["partition"], stored["offset"]) == ("herald.dlq", 1, 12)
    assert stored["detail"] == \
        "dead_letters: partition=1099511627776 does not fit dead_letters.partition Int32 (-2147483648..2147483647)"
    assert (stored["original_key"], stored["original_value"]) == (b"k", value)
    assert stored["notification_id"] == str(uuid.UUID(int=22))


def test_good_dead_letters_and_events_are_rows() -> None:
    serde = default_serde()
    records = [message("herald.dlq", serde.encode("DeadLetter", letter())),
               message("herald.events", serde.encode("LifecycleEvent", event()))]
    batches, dead, skipped = process(records, serde)
    assert [r.values for r in batches[DEAD_LETTERS_PROJECTION]] == [dead_letter_to_row(letter())]
    assert [r.values for r in batches[EVENTS_PROJECTION]] == [event_to_row(event())]
    assert dead == [] and skipped == 0


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
