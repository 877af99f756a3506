"""sinks/event_sink.py: what an INSERT failure means (an outage, or rows ClickHouse will not take), and
what the sink then does: retry the whole batch, or split it, store the rest and dead-letter the refused
rows, without ever looping on a dead letter. ClickHouse and Kafka are fakes here; the exceptions are the
real ones of clickhouse-driver."""

import socket
import struct
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.columns.service import write_column
from clickhouse_driver.context import Context
from clickhouse_driver.errors import ErrorCodes

from streams.codec import default_serde
from sinks import event_sink
from sinks.event_sink import (
    DEAD_LETTER_COLUMNS, DEAD_LETTERS_PROJECTION, EVENTS_PROJECTION, OUTAGE_CODES, ClickHouseWriter, EventSink,
    Row, Source, is_outage,
)
from streams.codec import bundle
from streams.dead_letters import dead_letter
from streams.settings import get_settings

AT = datetime(2024, 5, 6, 7, 8, 9, 456000, tzinfo=UTC)


# --- real exceptions -------------------------------------------------------------------------------------


class Sink:
    """Where clickhouse-driver's column writer puts bytes; we only want its exceptions."""

    def write(self, data: bytes) -> None:
        pass

    def write_strings(self, items: list, encoding: str | None = None) -> None:
        pass


def encoding_error(column_type: str, value: Any) -> Exception:
    """What clickhouse-driver raises while encoding `value` into a block column of `column_type`."""
    context = Context()
    context.client_settings = {"input_format_null_as_default": False, "strings_as_bytes": False,
                               "strings_encoding": "utf-8", "use_numpy": False}
    context.settings = {}
    try:
        write_column(context, "attempt", column_type, [value], Sink())
    except Exception as exc:  # noqa: BLE001 - that is the point
        return exc
    raise AssertionError(f"{value!r} fits {column_type}")


def struct_error() -> struct.error:
    try:
        struct.pack("<H", 70000)
    except struct.error as exc:
        return exc
    raise AssertionError


def server(code: int, message: str = "DB::Exception: something") -> ch_errors.ServerException:
    return ch_errors.ServerException(message, code=code)


OUTAGES = {
    "connection refused": ch_errors.NetworkError("Code: 210. Connection refused (127.0.0.1:9000)"),
    "socket timeout": ch_errors.SocketTimeoutError("Code: 209. timed out (127.0.0.1:9000)"),
    "unexpected packet": ch_errors.UnexpectedPacketFromServerError("Unexpected packet from server"),
    "unknown packet": ch_errors.UnknownPacketFromServerError("Unknown packet 99 from server"),
    "partially consumed": ch_errors.PartiallyConsumedQueryError(),
    "reset": ConnectionResetError(104, "Connection reset by peer"),
    "broken pipe": BrokenPipeError(32, "Broken pipe"),
    "socket.timeout": socket.timeout("timed out"),
    "eof": EOFError("Unexpected EOF while reading bytes"),
    "too many parts": server(ErrorCodes.TOO_MANY_PARTS, "DB::Exception: Too many parts (300). Merges are "
                             "processing significantly slower than inserts."),
    "memory": server(ErrorCodes.MEMORY_LIMIT_EXCEEDED, "DB::Exception: Memory limit (total) exceeded"),
    "simultaneous queries": server(ErrorCodes.TOO_MANY_SIMULTANEOUS_QUERIES),
    "timeout": server(ErrorCodes.TIMEOUT_EXCEEDED),
    "disk full": server(ErrorCodes.NOT_ENOUGH_SPACE),
    "read-only table": server(ErrorCodes.TABLE_IS_READ_ONLY),
    "unknown table (no migrations)": server(ErrorCodes.UNKNOWN_TABLE, "DB::Exception: Table herald.x doesn't exist"),
    "read-only user": server(ErrorCodes.READONLY),
    "wrong password": server(ErrorCodes.WRONG_PASSWORD),
    "authentication failed (newer servers)": server(516),
    "driver logical error": ch_errors.LogicalError("no"),
    "a bug": RuntimeError("something unexpected"),
}

DATA = {
    "UInt16 70000 (the driver)": encoding_error("UInt16", 70000),
    "UInt16 -1 (the driver)": encoding_error("UInt16", -1),
    "Int32 2**40 (the driver)": encoding_error("Int32", 2**40),
    "UInt64 negative (the driver)": encoding_error("UInt64", -5),
    "Int64 2**63 (the driver)": encoding_error("Nullable(Int64)", 2**63),
    "not a uuid (the driver)": encoding_error("UUID", "nope"),
    "struct.error": struct_error(),
    "OverflowError": OverflowError("timestamp out of range for platform time_t"),
    "TypeError": TypeError("'<' not supported between instances of 'str' and 'int'"),
    "ValueError": ValueError("bad value"),
    "UnicodeEncodeError": UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    "server type mismatch": server(ErrorCodes.TYPE_MISMATCH),
    "server cannot parse": server(ErrorCodes.CANNOT_PARSE_DATETIME),
    "server argument out of bound": server(ErrorCodes.ARGUMENT_OUT_OF_BOUND),
    "server too large string": server(ErrorCodes.TOO_LARGE_STRING_SIZE),
    "too many partitions in one block (newer servers)": server(
        ErrorCodes.TOO_MANY_PARTS, "DB::Exception: Too many partitions for single INSERT block (more than 100)."),
}


def test_the_driver_wraps_an_out_of_range_value_as_type_mismatch() -> None:
    exc = DATA["UInt16 70000 (the driver)"]
    assert isinstance(exc, ch_errors.TypeMismatchError) and not isinstance(exc, ch_errors.ServerException)
    assert "65535" in str(exc)


@pytest.mark.parametrize("name", OUTAGES)
def test_outages(name: str) -> None:
    assert is_outage(OUTAGES[name])


@pytest.mark.parametrize("name", DATA)
def test_data_errors(name: str) -> None:
    assert not is_outage(DATA[name])


def test_outage_codes_are_server_codes() -> None:
    assert ErrorCodes.TOO_MANY_PARTS in OUTAGE_CODES and ErrorCodes.NETWORK_ERROR in OUTAGE_CODES
    assert ErrorCodes.TYPE_MISMATCH not in OUTAGE_CODES


# --- the writer: isolate the refused rows ---------------------------------------------------------------


def consumer_record(topic: str = "herald.events", offset: int = 5, value: bytes = b"v") -> ConsumerRecord:
    return ConsumerRecord(topic=topic, partition=2, offset=offset, timestamp=0, timestamp_type=0, key=b"k",
                          value=value, checksum=None, serialized_key_size=1, serialized_value_size=len(value),
                          headers=[("h", None)])


def rows(n: int, bad: set[int] = frozenset()) -> list[Row]:  # type: ignore[assignment]
    """Rows whose second value is their index and whose 'attempt' is 70000 when the index is in `bad`."""
    return [Row((i, 70000 if i in bad else 1), Source(consumer_record(offset=i), b"k%d" % i, b"v%d" % i))
            for i in range(n)]


class FakeClient:
    """Takes a block unless a row holds 70000 (refused as the driver does), or it is told to be down."""

    def __init__(self, log: "Server") -> None:
        self.server = log

    def execute(self, query: str, block: list[tuple]) -> int:
        self.server.statements.append((query, list(block)))
        if self.server.down:
            raise self.server.down.pop(0)
        if any(70000 in row for row in block) or (self.server.refuse and query.startswith(self.server.refuse)):
            raise encoding_error("UInt16", 70000)
        self.server.stored.setdefault(query.split()[2], []).extend(block)
        return len(block)

    def disconnect(self) -> None:
        self.server.disconnects += 1


class Server:
    def __init__(self) -> None:
        self.statements: list[tuple[str, list[tuple]]] = []
        self.stored: dict[str, list[tuple]] = {}
        self.down: list[Exception] = []
        self.refuse = ""
        self.disconnects = 0
        self.connects = 0

    def connect(self, settings: object) -> FakeClient:
        self.connects += 1
        return FakeClient(self)


@pytest.fixture
def server_() -> Server:
    return Server()


@pytest.fixture
def writer(server_: Server) -> ClickHouseWriter:
    return ClickHouseWriter(get_settings(), client_factory=server_.connect)


def test_a_good_batch_is_one_insert(writer: ClickHouseWriter, server_: Server) -> None:
    assert writer.insert({EVENTS_PROJECTION: rows(1000)}) == []
    assert len(server_.statements) == 1 and len(server_.stored["notification_events"]) == 1000


@pytest.mark.parametrize(("n", "bad"), [(1, {0}), (2, {1}), (7, {0, 6}), (1000, {3}), (1000, {0, 499, 500, 999}),
                                        (20_000, {12_345})])
def test_refused_rows_are_found_and_every_other_row_is_stored_once(
    writer: ClickHouseWriter, server_: Server, n: int, bad: set[int]
) -> None:
    refused = writer.insert({EVENTS_PROJECTION: rows(n, bad)})
    assert sorted(r.row.values[0] for r in refused) == sorted(bad)
    assert all(r.projection is EVENTS_PROJECTION and "65535" in r.error for r in refused)
    assert sorted(v[0] for v in server_.stored.get("notification_events", [])) == \
        [i for i in range(n) if i not in bad]  # each good row exactly once
    if len(bad) == 1 and n > 8:  # bisection: about two inserts per halving, not one per row
        assert len(server_.statements) <= 2 * n.bit_length() + 8


def test_every_row_refused_is_every_row_refused(writer: ClickHouseWriter, server_: Server) -> None:
    refused = writer.insert({EVENTS_PROJECTION: rows(50, set(range(50)))})
    assert len(refused) == 50 and "notification_events" not in server_.stored


def test_an_outage_while_isolating_is_raised(
    writer: ClickHouseWriter, server_: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = FakeClient.execute

    def down_after_the_split(self: FakeClient, query: str, block: list[tuple]) -> int:
        if len(server_.statements) == 1:  # the whole batch failed for a row; now the server goes away
            server_.down.append(ch_errors.NetworkError("Code: 210. Connection reset"))
        return original(self, query, block)

    monkeypatch.setattr(FakeClient, "execute", down_after_the_split)
    with pytest.raises(ch_errors.NetworkError):  # the sink retries the whole batch; nothing is refused
        writer.insert({EVENTS_PROJECTION: rows(100, {10})})
    assert writer.client is None  # reconnects on the next try


def test_a_failed_insert_reconnects(writer: ClickHouseWriter, server_: Server) -> None:
    writer.insert({EVENTS_PROJECTION: rows(10, {4})})
    assert server_.disconnects == server_.connects - 1 >= 1


# --- the sink: write → dead letters, commit --------------------------------------------------------------


class FakeConsumer:
    def __init__(self) -> None:
        self.paused_: set[TopicPartition] = set()
        self.pauses = 0
        self.committed: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("herald.events", 2), TopicPartition("herald.dlq", 2)}

    def pause(self, *tps: TopicPartition) -> None:
        self.pauses += 1
        self.paused_ |= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_ -= set(tps)

    async def getmany(self, timeout_ms: int = 0, **kwargs: Any) -> dict:
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, value, key))


@pytest.fixture
async def sink(server_: Server) -> EventSink:
    service = EventSink(get_settings(), "test")
    service.writer = ClickHouseWriter(get_settings(), client_factory=server_.connect)
    service.consumer = FakeConsumer()  # type: ignore[assignment]
    service.producer = FakeProducer()  # type: ignore[assignment]
    return service


def lifecycle_event(i: int, attempt: int = 1) -> dict[str, Any]:
    return {"event_id": uuid.UUID(int=i), "notification_id": uuid.UUID(int=1000 + i), "tenant": "acme",
            "status": "sent", "stage": "deliver", "channel": "email", "provider": "smtp", "template_id": "welcome",
            "category": "transactional", "priority": "normal", "attempt": attempt, "error_code": None,
            "detail": None, "latency_ms": 5, "occurred_at": AT}


async def run_once(sink: EventSink, records: list[ConsumerRecord]) -> None:
    """One turn of EventSink._run: process → dead letters → write → commit."""
    batches, dead = sink.process(records)
    await sink.dead_letter(dead)
    await sink.write(batches)
    await sink.commit(records)


@pytest.fixture
def no_precheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let values that do not fit through `process`, as if the range check had missed them."""
    monkeypatch.setattr(event_sink, "fits", lambda table, column, field, value: value)


async def test_a_row_clickhouse_refuses_is_dead_lettered_and_the_rest_is_written(
    sink: EventSink, server_: Server, no_precheck: None
) -> None:
    serde = default_serde()
    events = [lifecycle_event(i, attempt=70000 if i == 3 else 1) for i in range(10)]
    encoded = [(e["notification_id"].bytes, serde.encode("LifecycleEvent", e)) for e in events]
    record = consumer_record(value=bundle(serde, encoded))

    await run_once(sink, [record])

    assert sorted(row[0] for row in server_.stored["notification_events"]) == \
        [uuid.UUID(int=i) for i in range(10) if i != 3]
    [(topic, value, key)] = sink.producer.sent  # type: ignore[attr-defined]
    letter = serde.decode(value, "DeadLetter")
    assert topic == "herald.dlq" and key == encoded[3][0]
    assert letter["reason_code"] == "unstorable" and letter["stage"] == "track"
    assert letter["detail"].startswith("notification_events: ClickHouse refused the row: TypeMismatchError")
    assert "Column attempt" in letter["detail"] and "65535" in letter["detail"]
    assert letter["original_value"] == encoded[3][1] and letter["notification_id"] == uuid.UUID(int=1003)
    assert (sink.rows_written, sink.rows_refused) == (9, 1)
    assert sink.consumer.committed == {TopicPartition("herald.events", 2): 6}  # type: ignore[attr-defined]
    assert sink.consumer.pauses == 0  # type: ignore[attr-defined]  # a data error is no outage


async def test_an_event_that_does_not_fit_never_reaches_clickhouse(sink: EventSink, server_: Server) -> None:
    serde = default_serde()
    events = [lifecycle_event(i, attempt=70000 if i == 3 else 1) for i in range(10)]
    record = consumer_record(value=bundle(serde, [(None, serde.encode("LifecycleEvent", e)) for e in events]))
    await run_once(sink, [record])
    assert len(server_.statements) == 1  # the pre-check caught it: one INSERT of the nine
    [(_, value, _)] = sink.producer.sent  # type: ignore[attr-defined]
    assert "attempt=70000 does not fit" in serde.decode(value, "DeadLetter")["detail"]
    assert sink.consumer.committed  # type: ignore[attr-defined]


async def test_an_outage_retries_the_whole_batch(sink: EventSink, server_: Server) -> None:
    serde = default_serde()
    record = consumer_record(value=bundle(serde, [(None, serde.encode("LifecycleEvent", lifecycle_event(i)))
                                                  for i in range(5)]))
    server_.down = [ch_errors.NetworkError("Code: 210. Connection refused"), EOFError("Unexpected EOF"),
                    server(ErrorCodes.TOO_MANY_PARTS, "DB::Exception: Too many parts (300).")]
    await run_once(sink, [record])
    assert [len(block) for _, block in server_.statements] == [5, 5, 5, 5]  # never split, never dropped
    assert len(server_.stored["notification_events"]) == 5 and sink.producer.sent == []  # type: ignore[attr-defined]
    assert sink.consumer.pauses == 3 and not sink.consumer.paused()  # type: ignore[attr-defined]
    assert sink.rows_written == 5 and sink.rows_refused == 0


def a_dead_letter(**overrides: Any) -> dict[str, Any]:
    return dead_letter(stage="deliver", reason_code="retries_exhausted", detail="5 attempts", topic="herald.retry.300s",
                       partition=3, offset=42, key=b"k", value=b"v", notification_id=uuid.UUID(int=7)) \
        | {"failed_at": AT} | overrides


async def test_a_refused_dead_letter_becomes_a_row_of_the_sink(sink: EventSink, server_: Server) -> None:
    serde = default_serde()
    value = serde.encode("DeadLetter", a_dead_letter(partition=70000))  # fits Int32, but the fake refuses 70000
    good = serde.encode("DeadLetter", a_dead_letter())
    records = [consumer_record("herald.dlq", 8, value), consumer_record("herald.dlq", 9, good)]
    await run_once(sink, records)
    stored = [dict(zip(DEAD_LETTER_COLUMNS, row, strict=True)) for row in server_.stored["dead_letters"]]
    assert [(s["stage"], s["reason_code"], s["offset"]) for s in stored] == \
        [("deliver", "retries_exhausted", 42), ("track", "unstorable", 8)]
    assert stored[1]["original_value"] == value and "ClickHouse refused the row" in stored[1]["detail"]
    assert sink.producer.sent == []  # type: ignore[attr-defined]  # never back to herald.dlq
    assert sink.dead_letters_skipped == 0
    assert sink.consumer.committed == {TopicPartition("herald.dlq", 2): 10}  # type: ignore[attr-defined]


async def test_a_dead_letter_clickhouse_refuses_in_any_form_is_skipped_not_retried(
    sink: EventSink, server_: Server
) -> None:
    serde = default_serde()
    server_.refuse = "INSERT INTO dead_letters"  # whatever the row holds
    records = [consumer_record("herald.dlq", 8, serde.encode("DeadLetter", a_dead_letter()))]
    await run_once(sink, records)
    assert [len(block) for _, block in server_.statements] == [1, 1]  # the letter, then the sink's row for it
    assert sink.dead_letters_skipped == 1 and sink.producer.sent == []  # type: ignore[attr-defined]
    assert sink.consumer.committed == {TopicPartition("herald.dlq", 2): 9}  # type: ignore[attr-defined]


async def test_a_huge_undecodable_bundle_is_dead_lettered_reduced_to_fit(sink: EventSink) -> None:
    serde = default_serde()
    huge = b"\xc3\x01" + b"\x00" * (get_settings().max_message_bytes + 500)
    await run_once(sink, [consumer_record(value=huge)])
    [(_, value, _)] = sink.producer.sent  # type: ignore[attr-defined]
    assert len(value) <= get_settings().max_record_bytes
    letter = serde.decode(value, "DeadLetter")
    assert letter["reason_code"] == "undecodable" and "[original truncated to" in letter["detail"]
