"""In-app messages: delivering one appends an InboxEvent (kind `message`) to herald.inbox.

The provider is Herald itself ("herald-inbox"): the gateway folds herald.inbox into each user's inbox
and serves it over HTTP and Server-Sent Events (gateway/inbox.py). A message is sent once the broker
acknowledged it (acks=all). Its event id is derived from the notification, tenant and user, which
is the idempotency key here: a resend after a crash appends a second record with the same id, and
the inbox keeps one copy.
"""

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import KafkaError
from mode import Service

from agents.channels.base import SENT, Channel, Outcome, Result
from schemas.models import InboxEvent, InboxEventKind
from streams.codec import default_serde
from streams.producers import RenewingProducer
from streams.settings import Settings
from streams.topics import INBOX

MAX_USER_ID_CHARS = 256  # as the gateway holds recipient.user_id
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Subject, text and data of one message, in UTF-8 bytes: an inbox holds up to `inbox.max_messages`
# of them per user in every gateway's memory, so a message is far smaller than a rendered email may be.
MAX_MESSAGE_BYTES = 64 * 1024


def user_id(raw: str) -> str:
    """The inbox's owner: a user id, stripped, 1 to 256 characters without control characters."""
    value = raw.strip()
    if not value:
        raise ValueError("the user id is empty")
    if len(value) > MAX_USER_ID_CHARS:
        raise ValueError(f"the user id is {len(value)} characters; at most {MAX_USER_ID_CHARS}")
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("the user id holds control characters")
    return value


def inbox_key(tenant: str, user: str) -> bytes:
    """The Kafka key on herald.inbox: one user's events share a partition, so they stay in order."""
    return f"{tenant}/{user}".encode()


def message_event_id(notification_id: uuid.UUID, tenant: str, user: str) -> uuid.UUID:
    return uuid.uuid5(notification_id, f"inbox/{tenant}/{user}")


def content_bytes(content: dict[str, Any]) -> int:
    parts = [content["subject"] or "", content["text"] or "", *content["data"].keys(), *content["data"].values()]
    return sum(len(part.encode()) for part in parts)


def message_event(task: dict[str, Any], user: str) -> InboxEvent:
    content = task["content"]
    return InboxEvent(
        event_id=message_event_id(task["notification_id"], task["tenant"], user), kind=InboxEventKind.message,
        tenant=task["tenant"], user_id=user, notification_id=task["notification_id"],
        subject=content["subject"], text=content["text"], data=content["data"], category=task["category"],
        template_id=task["template_id"], occurred_at=datetime.now(UTC),
    )


class InboxAdapter(Service):
    channel = "in_app"
    provider = "herald-inbox"

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.serde = default_serde()
        self.kafka = RenewingProducer(settings)

    async def on_start(self) -> None:
        await self.kafka.get()

    async def on_stop(self) -> None:
        await self.kafka.drop()

    async def send(self, task: dict[str, Any]) -> Outcome:
        # Checked here, where it is used, whichever stage the address came from.
        try:
            user = user_id(task["address"])
        except ValueError as exc:
            return Outcome(Result.PERMANENT, "invalid_address", f"{task['address']!r}: {exc}")
        size = content_bytes(task["content"])
        if size > MAX_MESSAGE_BYTES:
            return Outcome(Result.PERMANENT, "too_large", f"subject, text and data are {size} bytes; "
                                                          f"an in-app message holds at most {MAX_MESSAGE_BYTES}")
        try:
            value = self.serde.encode(InboxEvent.AVRO_NAME, message_event(task, user).to_avro())
        except ValueError as exc:  # SchemaEncodeError, pydantic's ValidationError
            return Outcome(Result.PERMANENT, "invalid_message", f"{type(exc).__name__}: {exc}")
        try:
            await self.kafka.send(INBOX.name, value, inbox_key(task["tenant"], user), self.settings.inbox.produce_timeout_s)
        except (KafkaError, asyncio.TimeoutError) as exc:
            return Outcome(Result.TRANSIENT, "kafka_unavailable", f"herald.inbox did not take the message: "
                                                                  f"{type(exc).__name__}: {exc}")
        return SENT


CHANNEL = Channel(
    name="in_app",
    contact="user id",
    addresses=lambda recipient, preferences: [recipient["user_id"]],
    normalize=user_id,
    invalid_reason="invalid_user_id",
    adapter=InboxAdapter,
)
