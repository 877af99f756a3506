"""What every stage shares: its Faust app, lifecycle events to herald.events, dead letters to herald.dlq."""

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

import faust
from mode import ServiceT

from streams.app import stage_app
from streams.codec import Undecodable
from streams.dead_letters import dead_letter
from schemas.serde import default_serde
from streams.topics import DLQ, EVENTS, REJECTED, TopicSpec

log = logging.getLogger(__name__)
S = TypeVar("S", bound=ServiceT)
# A stage's per-record work: the decoded record and the Faust event it came in.
Handler = Callable[[Any, faust.EventT], Awaitable[None]]


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


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
        "event_id": uuid.uuid5(notification_id, f"{stage}/{status}/{channel or ''}/{attempt}"),
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


class Stage:
    """A stage's Faust app, the services it needs beside its agents, and its shared outputs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.app = stage_app(name)
        self.services: list[ServiceT] = []
        self.serde = default_serde()

    async def run(self, stream: faust.StreamT, handle: Handler) -> None:
        """The body of a stage's agent: `handle` each decoded record, one at a time, in order."""
        async for event in stream.events():
            await self.handle_one(event, handle)

    async def handle_one(self, event: faust.EventT, handle: Handler) -> None:
        """Undecodable bytes, and records whose handling raised, go to herald.dlq; the agent lives on."""
        if isinstance(event.value, Undecodable):
            await self.dead_letter(event, "undecodable", event.value.error)
            return
        try:
            await handle(event.value, event)
        except Exception as exc:  # one bad record must not stop the stage
            log.exception("%s: failed on %s[%s]@%s", self.name, event.message.topic, event.message.partition,
                          event.message.offset)
            await self.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}")

    def needs(self, service: S) -> S:
        """Register a service (a folded table, the sink) that the worker starts with this stage."""
        self.services.append(service)
        return service

    async def reject(self, notification: dict[str, Any], reason_code: str, detail: str) -> None:
        """Refuse a notification: a Rejection on herald.rejected and a `rejected` lifecycle event."""
        rejection = {
            "notification_id": notification["notification_id"],
            "tenant": notification["tenant"],
            "stage": self.name,
            "reason_code": reason_code,
            "detail": detail,
            "original": self.serde.encode("Notification", notification),
            "rejected_at": now_utc(),
        }
        await self.send(REJECTED, notification["notification_id"].bytes, rejection)
        await self.emit(lifecycle_event(notification, "rejected", self.name, error_code=reason_code, detail=detail))

    async def emit(self, event: dict[str, Any]) -> None:
        await self.send(EVENTS, event["notification_id"].bytes, event)

    async def send(self, spec: TopicSpec, key: bytes | None, record: dict[str, Any]) -> None:
        """Encode and hand to the stage's producer, which Faust flushes before it commits input offsets.

        Straight to the producer rather than through a Faust topic's send(): that path costs more
        CPU than the Avro encoding itself, and a stage sends two or three records per input.
        """
        await self.app.producer.send(spec.name, key, self.serde.encode(spec.schemas[0], record), None, None, None)

    async def dead_letter(self, event: faust.EventT, reason_code: str, detail: str,
                          notification_id: uuid.UUID | None = None) -> None:
        """Send the message behind `event` to herald.dlq, whole, with the reason."""
        message = event.message
        value = event.value.data if isinstance(event.value, Undecodable) else message.value
        log.warning("%s: dead-lettering %s[%s]@%s: %s %s", self.name, message.topic, message.partition,
                    message.offset, reason_code, detail)
        record = dead_letter(
            stage=self.name, reason_code=reason_code, detail=detail, topic=message.topic,
            partition=message.partition, offset=message.offset, key=message.key, value=value,
            headers=dict(message.headers or {}), notification_id=notification_id,
        )
        await self.send(DLQ, message.key, record)
