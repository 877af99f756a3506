"""What a stage is: its declaration, the records it is handed, and what it returns to emit.

A stage's logic is a function over a batch of decoded records (`Incoming`) that returns `Outputs`:
records per topic, lifecycle events, rejections, dead letters and state writes. It does no Kafka
I/O of its own, so a unit test calls it with a list of dicts and reads back what it would emit.
`streams/runtime.py` runs it as a Faust agent; `agents/registry.py` lists every stage.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from schemas.serde import AvroSerde
from streams.dead_letters import dead_letter
from streams.ids import log_position
from streams.settings import Settings
from streams.topics import DLQ, EVENTS, REJECTED, TopicSpec

if TYPE_CHECKING:
    from mode import ServiceT

    from streams.tables import CancellationTable, PreferenceTable, ReceiptTable, StateTable, TemplateTable
    from streams.user_state import UserStateTable


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def user_key(record: Mapping[str, Any]) -> str:
    """`<tenant>/<user_id>`: the key of a user's per-user state, and of the internal topics that
    feed it, so a user's records share one partition (streams/user_state.py)."""
    return f"{record['tenant']}/{record['recipient']['user_id']}"


class RecordTooLarge(ValueError):
    """An output record bigger than `max_record_bytes`: the broker would refuse it."""


@dataclass(frozen=True)
class Incoming:
    """One decoded input record and where it came from (a bundled record keeps its index)."""

    key: bytes | None
    value: dict[str, Any]
    schema: str
    topic: str
    partition: int
    offset: int
    raw: bytes
    index: int = -1  # index in its RecordBundle; -1 for a message that holds one record
    headers: Mapping[str, bytes | None] = field(default_factory=dict)

    @property
    def position(self) -> str:
        """Where the record sits in the log; stable across re-reads."""
        position = log_position(self.topic, self.partition, self.offset)
        return position if self.index < 0 else f"{position}/{self.index}"


@dataclass(frozen=True)
class Outgoing:
    """One encoded record to produce: bundled with others when its topic is a bundled one."""

    topic: TopicSpec
    key: bytes | None
    value: bytes | None
    partition: int | None = None  # set for a user state write: the partition of its user's input


def lifecycle_event(
    notification: Mapping[str, Any],
    status: str,
    stage: str,
    *,
    channel: str | None = None,
    provider: str | None = None,
    attempt: int = 0,
    error_code: str | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """A LifecycleEvent about a notification or a delivery task.

    The event id is derived from what happened, not drawn at random, so a stage that processes the
    same message twice (at-least-once) emits the same event twice and ClickHouse keeps one.
    """
    at = at or now_utc()
    started = notification.get("requested_at") or notification["received_at"]
    notification_id = notification["notification_id"]
    return {
        # A delivery task's address is part of what happened: push sends to each of a user's devices.
        "event_id": uuid.uuid5(notification_id, f"{stage}/{status}/{channel or ''}/{attempt}/{notification.get('address', '')}"),
        "notification_id": notification_id,
        "tenant": notification["tenant"],
        "status": status,
        "stage": stage,
        "channel": channel,
        "provider": provider,
        "template_id": notification["template_id"],
        "category": notification["category"],
        "priority": notification["priority"],
        "attempt": attempt,
        "error_code": error_code,
        "detail": detail,
        "latency_ms": int((at - started).total_seconds() * 1000),
        "occurred_at": at,
    }


class Outputs:
    """What a stage emits for a batch, encoded as it is added.

    Encoding here, inside the handler's call, means a record that cannot be encoded (or is too big)
    fails the input record that made it, which the runtime then dead-letters alone.
    """

    def __init__(self, stage: str, serde: AvroSerde, max_record_bytes: int) -> None:
        self.stage = stage
        self.serde = serde
        self.max_record_bytes = max_record_bytes
        self.records: list[Outgoing] = []
        # Pending state writes by (table, key): applied to the tables once the batch's outputs are
        # acknowledged by the broker.
        self.state: dict[tuple[str, str], tuple[StateTable, str, Any]] = {}
        # (status, reason) → count, and each event's seconds since its request: the metrics.
        self.tally: Counter[tuple[str, str]] = Counter()
        self.since_request: list[tuple[str, float]] = []
        # Pending per-user state writes by (table, user key): (table, partition, value).
        self.user_state: dict[tuple[str, str], tuple[UserStateTable, int, Any]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def state_blocks(self, block_id: str) -> list[Outgoing]:
        """The state writes as block records, one per table (see StateTable)."""
        writes: dict[str, dict[str, Any]] = {}
        tables: dict[str, StateTable] = {}
        for table, key, value in self.state.values():
            writes.setdefault(table.spec.name, {})[key] = value
            tables[table.spec.name] = table
        return [Outgoing(tables[name].spec, key, value)
                for name, entries in writes.items()
                for key, value in tables[name].encode(block_id, entries)]

    def user_state_records(self) -> list[Outgoing]:
        """The per-user state writes, each to its user's partition of the table's changelog."""
        return [Outgoing(table.spec, key.encode(), table.encode(value), partition)
                for (_, key), (table, partition, value) in self.user_state.items()]

    def extend(self, other: Outputs) -> None:
        self.records.extend(other.records)
        self.tally.update(other.tally)
        self.since_request.extend(other.since_request)
        self.state.update(other.state)
        self.user_state.update(other.user_state)

    def of(self, topic: TopicSpec) -> list[dict[str, Any]]:
        """The decoded records emitted to one topic (for tests and logs)."""
        return [self.serde.decode(r.value, topic.schemas[0]) for r in self.records if r.topic == topic and r.value]

    def send(self, topic: TopicSpec, key: bytes | None, record: Mapping[str, Any], schema: str | None = None) -> None:
        value = self.serde.encode(schema or topic.schemas[0], record)
        if len(value) + len(key or b"") > self.max_record_bytes:
            raise RecordTooLarge(f"{schema or topic.schemas[0]} for {topic.name} is {len(value)} bytes; "
                                 f"at most {self.max_record_bytes}")
        self.records.append(Outgoing(topic, key, value))

    def event(self, subject: Mapping[str, Any], status: str, **fields: Any) -> None:
        """A lifecycle event about a notification or a delivery task, to herald.events."""
        event = lifecycle_event(subject, status, self.stage, **fields)
        self.send(EVENTS, subject["notification_id"].bytes, event)
        self.tally[(status, event["error_code"] or "")] += 1
        self.since_request.append((status, event["latency_ms"] / 1000))

    def reject(self, notification: Mapping[str, Any], reason_code: str, detail: str) -> None:
        """Refuse a notification: a Rejection on herald.rejected and a `rejected` lifecycle event."""
        rejection = {
            "notification_id": notification["notification_id"],
            "tenant": notification["tenant"],
            "stage": self.stage,
            "reason_code": reason_code,
            "detail": detail,
            "original": self.serde.encode("Notification", notification),
            "rejected_at": now_utc(),
        }
        self.send(REJECTED, notification["notification_id"].bytes, rejection)
        self.event(notification, "rejected", error_code=reason_code, detail=detail)

    def dead_letter(self, record: Incoming | None, reason_code: str, detail: str, *, topic: str | None = None,
                    key: bytes | None = None, value: bytes | None = None, partition: int = -1, offset: int = -1,
                    headers: Mapping[str, bytes | None] | None = None,
                    notification_id: uuid.UUID | None = None) -> None:
        """Send a record to herald.dlq whole, with the reason; reduced to what fits, never dropped.

        Either `record` (a decoded input) or the raw `topic`/`key`/`value` of what did not decode.
        """
        if record is not None:
            topic, key, value = record.topic, record.key, record.raw
            partition, offset, headers = record.partition, record.offset, record.headers
        # A header may have no value; the DeadLetter schema's map holds bytes.
        clean_headers = {name: data or b"" for name, data in (headers or {}).items()}
        letter = dead_letter(stage=self.stage, reason_code=reason_code, detail=detail[:4096], topic=topic or "",
                             partition=partition, offset=offset, key=key, value=value, headers=clean_headers,
                             notification_id=notification_id)
        encoded = self.serde.encode("DeadLetter", letter)
        excess = len(encoded) + len(key or b"") - self.max_record_bytes
        if excess > 0:  # keep the head of the original and say so
            kept = max(0, len(value or b"") - excess - 256)
            letter.update(original_value=(value or b"")[:kept], headers={},
                          detail=f"{letter['detail']} [original truncated to {kept} of {len(value or b'')} bytes]")
            encoded = self.serde.encode("DeadLetter", letter)
        self.records.append(Outgoing(DLQ, key, encoded))
        self.tally[("dead_letter", reason_code)] += 1

    def put_state(self, table: StateTable, key: str, value: Any) -> None:
        """Write a stage's own state; the runtime produces it (one block per table and batch) with
        the batch's other outputs."""
        self.state[(table.spec.name, key)] = (table, key, value)

    def pending_state(self, table: StateTable, key: str) -> Any:
        """The value this batch wrote for `key`, else the table's (a repeat within one batch counts)."""
        pending = self.state.get((table.spec.name, key))
        return table.get(key) if pending is None else pending[2]

    def put_user_state(self, table: UserStateTable, key: str, value: Any, partition: int) -> None:
        """Write a user's whole state (None deletes it) to `partition`: the input partition of the
        record that made the write, or `table.partition_of(key)` (see streams/user_state.py)."""
        self.user_state[(table.spec.name, key)] = (table, partition, value)

    def pending_user_state(self, table: UserStateTable, key: str) -> Any:
        """The user's state as this batch left it, else the table's."""
        pending = self.user_state.get((table.spec.name, key))
        return table.get(key) if pending is None else pending[2]


@dataclass
class Context:
    """What a handler may read: settings, folded tables, its own state, and its services."""

    stage: str
    settings: Settings
    serde: AvroSerde
    templates: TemplateTable | None = None
    preferences: PreferenceTable | None = None
    cancellations: CancellationTable | None = None
    receipts: ReceiptTable | None = None
    state: dict[str, StateTable] = field(default_factory=dict)
    # Per-user state by changelog topic name (streams/user_state.py).
    user_state: dict[str, UserStateTable] = field(default_factory=dict)
    # Services by name, started with the worker: deliver's provider adapters (by channel), track's sink.
    services: dict[str, Any] = field(default_factory=dict)

    # State writes of earlier records of the batch, when the runtime hands its records over one by
    # one (after the batch raised): a repeat is still a repeat of what came before it.
    carried: Outputs | None = None

    def outputs(self) -> Outputs:
        out = Outputs(self.stage, self.serde, self.settings.max_record_bytes)
        if self.carried is not None:
            out.state.update(self.carried.state)
            out.user_state.update(self.carried.user_state)
        return out


Handler = Callable[[list[Incoming], Context], "Outputs | Awaitable[Outputs]"]
# Work due by time rather than by a record (a digest window closing): called every tick.
Tick = Callable[[Context], "Outputs | Awaitable[Outputs]"]


def stage_app_id(settings: Settings, stage: str) -> str:
    """A stage's Faust app id, which is its agents' consumer group: `<app id>-<stage>`."""
    return f"{settings.app_id}-{stage}"


@dataclass(frozen=True)
class StateSpec:
    """A stage's own state: a compacted topic it writes and folds, entries kept for `ttl_setting`."""

    topic: TopicSpec
    ttl_setting: str


@dataclass(frozen=True)
class StageSpec:
    """A stage's declaration; the worker, `herald up`, the Kubernetes check and the docs read it."""

    name: str
    doc: str
    inputs: tuple[TopicSpec, ...]
    outputs: tuple[TopicSpec, ...]
    # The batch handler; None for a stage whose work is a service of its own (track's sink).
    handle: Handler | None = None
    tables: tuple[str, ...] = ()  # folded tables it reads: "templates", "preferences", "cancellations", "receipts"
    state: tuple[StateSpec, ...] = ()
    # Changelogs of per-user state, partitioned like the inputs (streams/user_state.py).
    user_state: tuple[TopicSpec, ...] = ()
    tick: Tick | None = None
    tick_setting: str = "stage_tick_s"
    # Services the stage runs beside its agents: provider adapters (by channel) or a sink.
    services: Callable[[Settings], dict[str, ServiceT]] | None = None
    # The setting that bounds the records handed to the handler at once. Their outputs are in Kafka
    # before the next call, so a crash loses the outputs of at most one chunk: for deliver, at most
    # that many provider sends happen again (the provider's idempotency key absorbs them).
    chunk_setting: str = "stage_handler_records"
    # Inputs whose records wait for a due time anyway (retry topics): taken every
    # `stage_delayed_within_s` rather than every `stage_batch_within_s`, which saves the wakeups.
    delayed_inputs: tuple[TopicSpec, ...] = ()
    # The consumer group that does the stage's work when it is not the Faust app's (track's sink).
    group: str | None = None

    def app_id(self, settings: Settings) -> str:
        return stage_app_id(settings, self.name)

    def group_id(self, settings: Settings) -> str:
        """The consumer group whose lag is the stage's backlog."""
        return f"{settings.app_id}-{self.group}" if self.group else self.app_id(settings)
