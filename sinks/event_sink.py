"""The ClickHouse sink: herald.events → notification_events and herald.dlq → dead_letters, in four plain steps.

1. process: one record → one row (`event_to_row`, `dead_letter_to_row`, pure). A value that does not fit
            its column (`COLUMN_RANGES`: a UInt16 attempt of 70000, an occurred_at before 1970) makes the
            record unstorable: an event is dead-lettered to herald.dlq (reason `unstorable`), a dead
            letter becomes a dead_letters row of its own (see below). The rest of the batch goes on.
2. batch:   collect up to `sink_batch_size` events or `sink_flush_seconds` of them.
3. write:   one INSERT per table and batch. A failure is either an outage (`is_outage`: the server is
            unreachable, overloaded or refuses every insert) or about some rows. On an outage, pause
            the partitions and retry the whole batch with backoff until it succeeds, so a ClickHouse
            outage stalls the sink instead of losing events. Otherwise split the batch (`isolate`) to
            find the rows ClickHouse refuses, insert the others, and dead-letter the refused ones
            like unstorable records.
4. commit:  Kafka offsets only after the insert returned and the dead letters were acknowledged.

Dead letters never loop: what the sink cannot store from herald.dlq (it does not decode, does not fit,
or ClickHouse refuses it) is not sent back to herald.dlq but becomes a dead_letters row made by the
sink from the Kafka coordinates and the raw bytes. If ClickHouse refuses even that row, it is logged
and counted (`dead_letters_skipped`), never retried.

Why a plain aiokafka consumer and not a Faust agent: Faust acks events as the stream iterates
(`stream.take()` acks its buffer in a `finally` even when the insert raised) and commits acked
offsets on its own timer, so it cannot promise "committed only after written". Here the commit is
an explicit call after the insert. A stop during a failed insert never reaches the commit; a replay
of uncommitted events is harmless because the table collapses rows by event_id.
"""

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.errors import ErrorCodes
from mode import Service

from schemas.serde import AvroSerde, SchemaDecodeError
from streams.codec import default_serde
from sinks.clickhouse_client import connect
from streams.dead_letters import dead_letter
from streams.kafka_clients import client_kwargs
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

# --- 1. process: records → rows that fit ------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Range:
    """The values a ClickHouse column type can hold (both ends included)."""

    type: str
    low: Any
    high: Any

    def __str__(self) -> str:
        if isinstance(self.low, datetime):
            return f"{self.type} ({self.low:%Y-%m-%dT%H:%M:%SZ}..{self.high:%Y-%m-%dT%H:%M:%SZ})"
        return f"{self.type} ({self.low}..{self.high})"


UINT16 = Range("UInt16", 0, 2**16 - 1)
INT32 = Range("Int32", -(2**31), 2**31 - 1)
INT64 = Range("Int64", -(2**63), 2**63 - 1)
UINT64 = Range("UInt64", 0, 2**64 - 1)
# DateTime is a UInt32 of seconds, but ClickHouse 18.16's date functions (toYYYYMMDD, the partition key)
# only cover 1970..2105. It stores whole seconds: 2105-12-31T23:59:59.999 is stored as ...:59.
DATETIME = Range("DateTime", EPOCH, datetime(2105, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))

# Every numeric and time column of sinks/migrations, with its range. The other columns are UUID (the
# Avro uuid logical type decodes only to a UUID) and String (no length limit; Avro strings are valid
# UTF-8 once decoded). Keep this in step with the migrations; tests/unit/test_sink_rows.py checks it.
COLUMN_RANGES: dict[str, dict[str, Range]] = {
    "notification_events": {"attempt": UINT16, "latency_ms": INT64, "event_time": DATETIME, "event_time_ms": UINT64},
    "dead_letters": {"failed_at": DATETIME, "failed_at_ms": UINT64, "partition": INT32, "offset": INT64},
}


class Unstorable(ValueError):
    """A record with a value its column cannot hold; the message names the field, the value and the column."""

    def __init__(self, table: str, column: str, field: str, value: Any, kind: Range | str) -> None:
        shown = value.isoformat() if isinstance(value, datetime) else repr(value)
        super().__init__(f"{field}={shown} does not fit {table}.{column} {kind}")
        self.table, self.column, self.field, self.value = table, column, field, value


def fits(table: str, column: str, field: str, value: Any) -> Any:
    """`value` when column `column` of `table` can hold it; else raises Unstorable. None passes (Nullable)."""
    span = COLUMN_RANGES[table][column]
    if value is None:
        return None
    if isinstance(span.low, datetime):
        ok = isinstance(value, datetime) and value.tzinfo is not None and span.low <= value <= span.high
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and span.low <= value <= span.high
    if not ok:
        raise Unstorable(table, column, field, value, span)
    return value


def a_uuid(table: str, column: str, field: str, value: Any) -> UUID:
    if not isinstance(value, UUID):
        raise Unstorable(table, column, field, value, "UUID")
    return value


def epoch_ms(at: datetime) -> int:
    """Milliseconds since 1970, exactly (no float rounding)."""
    return (at - EPOCH) // ONE_MS


def event_to_row(event: dict[str, Any]) -> tuple[Any, ...]:
    """The notification_events row of a decoded LifecycleEvent; raises Unstorable if a value does not fit."""
    table = "notification_events"
    occurred: datetime = fits(table, "event_time", "occurred_at", event["occurred_at"])
    return (
        a_uuid(table, "event_id", "event_id", event["event_id"]),
        a_uuid(table, "notification_id", "notification_id", event["notification_id"]),
        event["tenant"],
        event["stage"],
        event["status"],
        event["channel"] or "",
        event["provider"] or "",
        event["template_id"] or "",
        event["category"] or "",
        event["priority"],
        fits(table, "attempt", "attempt", event["attempt"]),
        event["error_code"] or "",
        event["detail"] or "",
        fits(table, "latency_ms", "latency_ms", event["latency_ms"]),
        occurred,
        fits(table, "event_time_ms", "occurred_at", epoch_ms(occurred)),
    )


def dead_letter_to_row(record: dict[str, Any]) -> tuple[Any, ...]:
    """The dead_letters row of a decoded DeadLetter; raises Unstorable if a value does not fit."""
    table = "dead_letters"
    failed: datetime = fits(table, "failed_at", "failed_at", record["failed_at"])
    return (
        failed,
        fits(table, "failed_at_ms", "failed_at", epoch_ms(failed)),
        record["stage"],
        record["reason_code"],
        record["detail"],
        record["topic"],
        fits(table, "partition", "partition", record["partition"]),
        fits(table, "offset", "offset", record["offset"]),
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


@dataclass(frozen=True)
class Source:
    """Where a row came from: its Kafka message, and its own key and framed bytes (one record of a bundle)."""

    message: ConsumerRecord
    key: bytes | None
    value: bytes
    notification_id: UUID | None = None


class Row(NamedTuple):
    values: tuple[Any, ...]
    source: Source


Batches = dict[Projection, list[Row]]


def sink_dead_letter(source: Source, reason_code: str, detail: str) -> dict[str, Any]:
    """A DeadLetter from the sink for one record: its key and bytes, its message's coordinates and headers."""
    record = source.message
    # A header may have no value; the DeadLetter schema's map holds bytes.
    headers = {name: data or b"" for name, data in record.headers or ()}
    return dead_letter(
        stage="track", reason_code=reason_code, detail=detail[:4096], topic=record.topic, partition=record.partition,
        offset=record.offset, key=source.key, value=source.value, headers=headers,
        notification_id=source.notification_id,
    )


def undecodable_dead_letter(record: ConsumerRecord, error: str, key: bytes | None, value: bytes) -> dict[str, Any]:
    return sink_dead_letter(Source(record, key, value), "undecodable", error)


def letter_row(source: Source, reason_code: str, detail: str) -> Row | None:
    """A dead_letters row the sink makes for a record of herald.dlq it cannot store as it is (the rule that
    keeps dead letters from looping). None, logged, in the unlikely case that it does not fit either."""
    try:
        return Row(dead_letter_to_row(sink_dead_letter(source, reason_code, detail)), source)
    except Unstorable as exc:
        log.error("sink: skipping %s@%s/%s, not even its dead_letters row fits: %s", source.message.topic,
                  source.message.partition, source.message.offset, exc)
        return None


def process(records: Iterable[ConsumerRecord], serde: AvroSerde) -> tuple[Batches, list[dict[str, Any]], int]:
    """Rows per table, the dead letters for herald.dlq (events that do not decode or do not fit), and the
    number of records skipped because not even a dead_letters row could be made of them. Pure."""
    batches: Batches = {p: [] for p in PROJECTIONS.values()}
    dead: list[dict[str, Any]] = []
    skipped = 0
    for record in records:
        projection = PROJECTIONS[record.topic]
        for key, value in values(record, projection, serde):
            source = Source(record, key, value)
            try:
                decoded = serde.decode(value, projection.schema)
            except SchemaDecodeError as exc:
                reason, detail = "undecodable", str(exc)
            else:
                known = decoded.get("notification_id")
                source = Source(record, key, value, known if isinstance(known, UUID) else None)
                try:
                    batches[projection].append(Row(projection.to_row(decoded), source))
                    continue
                except (Unstorable, TypeError, ValueError, OverflowError) as exc:
                    reason, detail = "unstorable", f"{projection.table}: {exc}"
            if projection is DEAD_LETTERS_PROJECTION:
                row = letter_row(source, reason, detail)
                if row is None:
                    skipped += 1
                else:
                    batches[projection].append(row)
            else:
                dead.append(sink_dead_letter(source, reason, detail))
    return batches, dead, skipped


def values(record: ConsumerRecord, projection: Projection, serde: AvroSerde) -> list[tuple[bytes | None, bytes]]:
    """The (key, value) records a message holds: many in a RecordBundle, else itself."""
    if not projection.topic.bundled:
        return [(record.key, record.value or b"")]
    try:
        return unbundle(serde, record.value)
    except SchemaDecodeError:  # the whole message then fails to decode, and is dead-lettered whole
        return [(record.key, record.value or b"")]


def next_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offsets to commit after these records: last offset + 1 per partition."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


# --- 3. write: outages and data errors -------------------------------------------------------------------

# The one list of what makes an INSERT an outage: ClickHouse cannot take any insert now, whatever the
# rows hold, so the sink pauses and retries the whole batch. Anything else is about the rows.
#
# Raised by clickhouse-driver or the socket before or while talking to the server:
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    ch_errors.NetworkError,                     # connection refused or lost
    ch_errors.SocketTimeoutError,               # connect or read timed out
    ch_errors.UnexpectedPacketFromServerError,  # the protocol lost step: reconnect and retry
    ch_errors.UnknownPacketFromServerError,
    ch_errors.PartiallyConsumedQueryError,
    OSError,                                    # socket errors not wrapped by the driver (reset, broken pipe)
    EOFError,                                   # the server closed the connection mid-answer
)
# Server exception codes (clickhouse_driver.errors.ErrorCodes):
OUTAGE_CODES: frozenset[int] = frozenset({
    # unavailable
    ErrorCodes.NETWORK_ERROR, ErrorCodes.SOCKET_TIMEOUT, ErrorCodes.CANNOT_READ_FROM_SOCKET,
    ErrorCodes.CANNOT_WRITE_TO_SOCKET, ErrorCodes.ALL_CONNECTION_TRIES_FAILED, ErrorCodes.TIMEOUT_EXCEEDED,
    ErrorCodes.ABORTED, ErrorCodes.QUERY_WAS_CANCELLED, ErrorCodes.TABLE_IS_READ_ONLY, ErrorCodes.NO_ZOOKEEPER,
    ErrorCodes.KEEPER_EXCEPTION, ErrorCodes.UNEXPECTED_ZOOKEEPER_ERROR, ErrorCodes.NO_AVAILABLE_REPLICA,
    ErrorCodes.ALL_REPLICAS_ARE_STALE, ErrorCodes.TOO_LESS_LIVE_REPLICAS, ErrorCodes.REPLICA_IS_NOT_IN_QUORUM,
    ErrorCodes.UNKNOWN_STATUS_OF_INSERT, ErrorCodes.TABLE_IS_DROPPED,
    # overloaded
    ErrorCodes.TOO_MANY_PARTS, ErrorCodes.TOO_MANY_SIMULTANEOUS_QUERIES, ErrorCodes.MEMORY_LIMIT_EXCEEDED,
    ErrorCodes.CANNOT_ALLOCATE_MEMORY, ErrorCodes.NOT_ENOUGH_SPACE, ErrorCodes.QUOTA_EXPIRED,
    ErrorCodes.RECEIVED_ERROR_TOO_MANY_REQUESTS,
    # refuses every insert until an operator acts (migrations not run, read-only user, credentials)
    ErrorCodes.UNKNOWN_TABLE, ErrorCodes.UNKNOWN_DATABASE, ErrorCodes.NO_SUCH_COLUMN_IN_TABLE,
    ErrorCodes.THERE_IS_NO_COLUMN, ErrorCodes.READONLY, ErrorCodes.UNKNOWN_USER, ErrorCodes.WRONG_PASSWORD,
    ErrorCodes.REQUIRED_PASSWORD, ErrorCodes.IP_ADDRESS_NOT_ALLOWED, ErrorCodes.DATABASE_ACCESS_DENIED,
    497,  # ACCESS_DENIED (servers after 18.16; not in the driver's ErrorCodes)
    516,  # AUTHENTICATION_FAILED (likewise)
})
# What clickhouse-driver raises while encoding a block client-side, for a value its column cannot hold
# (e.g. struct.error "'H' format requires 0 <= number <= 65535", wrapped as TypeMismatchError):
DATA_ERRORS: tuple[type[BaseException], ...] = (
    ch_errors.ServerException,  # any code not in OUTAGE_CODES
    ch_errors.TypeMismatchError, ch_errors.CannotParseUuidError, ch_errors.CannotParseDomainError,
    ch_errors.TooLargeStringSize,
    TypeError, ValueError, OverflowError, struct.error, KeyError, IndexError, AttributeError,
)


def is_outage(exc: BaseException) -> bool:
    """True when an INSERT failed because of ClickHouse, not because of the rows (see OUTAGE_CODES).

    Anything that is neither a listed outage nor a known data error (a driver LogicalError, a bug) counts
    as an outage: the sink stalls and says so rather than dead-letter every row of every batch."""
    if isinstance(exc, ch_errors.ServerException):
        # TOO_MANY_PARTS is also "Too many partitions for single INSERT block" on newer servers: that
        # one is the batch's doing (events of too many days), and a smaller batch gets in.
        if exc.code == ErrorCodes.TOO_MANY_PARTS and "partitions for single insert" in str(exc).lower():
            return False
        return exc.code in OUTAGE_CODES
    if isinstance(exc, OUTAGE_ERRORS):
        return True
    return not isinstance(exc, DATA_ERRORS)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Refused(NamedTuple):
    """A row ClickHouse would not take, and why."""

    projection: Projection
    row: Row
    error: str


# Below this many rows, a failed batch is tried row by row instead of halved.
ROW_BY_ROW = 8


class ClickHouseWriter:
    def __init__(self, settings: Settings, client_factory: Callable[[Settings], Client] = connect) -> None:
        self.settings = settings
        self.client_factory = client_factory
        self.client: Client | None = None
        self.inserts = 0  # INSERT statements sent, for tests and logs

    def insert(self, batches: Batches) -> list[Refused]:
        """One INSERT per table; a table's batch that fails for its rows is split to find them. Returns the
        rows ClickHouse refused; raises on an outage (`is_outage`). A retry after a partial failure
        re-inserts rows that made it; the tables collapse them."""
        refused: list[Refused] = []
        for projection, rows in batches.items():
            if rows:
                refused += self.isolate(projection, rows)
        return refused

    def isolate(self, projection: Projection, rows: list[Row], top: bool = True) -> list[Refused]:
        """Insert `rows`; if ClickHouse refuses them for what they hold, halve (or go row by row once
        small) and insert what it takes. Every good part is inserted once; a single row that fails is
        refused. An outage at any point is raised, and the whole batch is retried."""
        try:
            self.execute(projection, rows)
            return []
        except Exception as exc:
            if is_outage(exc):
                raise
            error = exc
        if len(rows) == 1:
            log.warning("sink: %s refused a row of %s@%s/%s: %s", projection.table, rows[0].source.message.topic,
                        rows[0].source.message.partition, rows[0].source.message.offset, error_text(error))
            return [Refused(projection, rows[0], error_text(error))]
        log.log(logging.WARNING if top else logging.DEBUG, "sink: %s refused %d rows (%s); splitting them",
                projection.table, len(rows), error_text(error))
        parts = [rows[i:i + 1] for i in range(len(rows))] if len(rows) <= ROW_BY_ROW else \
            [rows[:len(rows) // 2], rows[len(rows) // 2:]]
        return [refused for part in parts for refused in self.isolate(projection, part, top=False)]

    def execute(self, projection: Projection, rows: list[Row]) -> None:
        if self.client is None:
            self.client = self.client_factory(self.settings)
        self.inserts += 1
        try:
            self.client.execute(projection.insert, [row.values for row in rows])
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
        self.rows_refused = 0           # rows ClickHouse refused at insert time (then dead-lettered)
        self.dead_letters_skipped = 0   # records of herald.dlq that could not be stored in any form

    async def on_start(self) -> None:
        # Kafka clients are made here, inside the running loop, not at import.
        settings = self.settings
        self.consumer = AIOKafkaConsumer(
            *PROJECTIONS,
            **client_kwargs(settings),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.sink_batch_size,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        self.producer = AIOKafkaProducer(**client_kwargs(settings), acks="all",
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

    def process(self, records: list[ConsumerRecord]) -> tuple[Batches, list[dict[str, Any]]]:
        """Rows per table, and dead letters for the events that do not decode or do not fit (`process`)."""
        batches, dead, skipped = process(records, self.serde)
        self.dead_letters_skipped += skipped
        return batches, dead

    def values(self, record: ConsumerRecord, projection: Projection) -> list[tuple[bytes | None, bytes]]:
        """The (key, value) records a message holds: many in a RecordBundle, else itself."""
        return values(record, projection, self.serde)

    async def dead_letter(self, dead: list[dict[str, Any]]) -> None:
        for record in dead:
            log.warning("sink: dead-lettering %s@%s/%s (%s): %s", record["topic"], record["partition"],
                        record["offset"], record["reason_code"], record["detail"])
            await self.producer.send_and_wait(DLQ.name, self.encode_dead_letter(record), key=record["original_key"])

    def encode_dead_letter(self, letter: dict[str, Any]) -> bytes:
        """The DeadLetter's bytes, reduced as a stage reduces its own (streams/stage.py `Outputs.dead_letter`):
        a whole undecodable bundle plus the DeadLetter's fields may not fit in one message."""
        encoded = self.serde.encode("DeadLetter", letter)
        original = letter["original_value"] or b""
        excess = len(encoded) + len(letter["original_key"] or b"") - self.settings.max_record_bytes
        if excess > 0:  # keep the head of the original and say so
            kept = max(0, len(original) - excess - 256)
            letter = letter | {"original_value": original[:kept], "headers": {},
                               "detail": f"{letter['detail']} [original truncated to {kept} of {len(original)} bytes]"}
            encoded = self.serde.encode("DeadLetter", letter)
        return encoded

    async def write(self, batches: Batches) -> None:
        """Insert the batch; rows ClickHouse refuses for what they hold are dead-lettered like unstorable
        records (events to herald.dlq; a dead letter as a dead_letters row the sink makes, and if even
        that is refused, logged and skipped)."""
        refused = await self.insert(batches)
        letters: list[dict[str, Any]] = []
        replacements: list[Row] = []
        for projection, row, error in refused:
            detail = f"{projection.table}: ClickHouse refused the row: {error}"
            if projection is DEAD_LETTERS_PROJECTION:
                replacement = letter_row(row.source, "unstorable", detail)
                if replacement is None:
                    self.dead_letters_skipped += 1
                else:
                    replacements.append(replacement)
            else:
                letters.append(sink_dead_letter(row.source, "unstorable", detail))
        if replacements:
            for _, row, error in await self.insert({DEAD_LETTERS_PROJECTION: replacements}):
                message = row.source.message
                log.error("sink: skipping %s@%s/%s: ClickHouse refused even its dead_letters row: %s",
                          message.topic, message.partition, message.offset, error)
                self.dead_letters_skipped += 1
        await self.dead_letter(letters)

    async def insert(self, batches: Batches) -> list[Refused]:
        """Insert, retrying the whole batch while ClickHouse is out (`is_outage`); partitions stay paused
        meanwhile. Returns the rows ClickHouse refused."""
        delay = 0.5
        rows = sum(len(r) for r in batches.values())
        while True:
            try:
                refused = await asyncio.to_thread(self.writer.insert, batches)
                break
            except Exception as exc:  # an outage (ClickHouse or network): wait, never drop
                log.warning("sink: insert of %d rows failed (%s); retrying in %.1fs", rows, error_text(exc), delay,
                            exc_info=not isinstance(exc, (*OUTAGE_ERRORS, ch_errors.ServerException)))
                self.consumer.pause(*self.consumer.assignment())
                # Polling paused partitions returns nothing but keeps this consumer in its group.
                await self.consumer.getmany(timeout_ms=int(delay * 1000))
                delay = min(delay * 2, self.settings.sink_retry_max_seconds)
        self.consumer.resume(*self.consumer.paused())
        self.rows_written += rows - len(refused)
        self.rows_refused += len(refused)
        return refused

    async def commit(self, records: list[ConsumerRecord]) -> None:
        """Commit what was written, for the partitions this sink still has."""
        offsets = next_offsets(records)
        assigned = self.consumer.assignment()
        try:
            # A rebalance during the insert may have moved partitions away: committing those
            # raises IllegalStateError. Their new owner re-reads from the last commit; the rows
            # written twice collapse on event_id.
            ours = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            if ours:
                await self.consumer.commit(ours)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("sink: commit failed after a rebalance: %s", exc)
