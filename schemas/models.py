"""Pydantic models of Herald's Avro records, written by hand to mirror schemas/*.avsc.

The .avsc files are the contract; tests/unit/test_models.py fails when a model drifts from them
(field names, optionality, defaults, types, enum symbols).

Type mapping: string -> str, int/long -> int (range-checked), boolean -> bool, bytes -> bytes,
uuid -> uuid.UUID, timestamp-millis -> datetime (UTC-aware, millisecond precision), enum -> StrEnum,
record -> model, array -> list, map -> dict[str, ...], ["null", X] -> X | None = None.

`to_avro()` returns the dict fastavro's writer takes (enum members are str instances); `from_avro()`
takes what `AvroSerde.decode` returns.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "ApiKeyChanged",
    "AvroModel",
    "BatchRecipient",
    "Channel",
    "ContactRemoved",
    "DeadLetter",
    "DeliveryReceipt",
    "DeliveryTask",
    "DigestSpec",
    "Fallback",
    "FrequencyCap",
    "InboxEvent",
    "InboxEventKind",
    "LifecycleEvent",
    "LifecycleStatus",
    "MODELS",
    "Notification",
    "NotificationCancelled",
    "NotificationBatch",
    "NotificationRequest",
    "OptOut",
    "OverCap",
    "PreferencesUpdated",
    "Priority",
    "QuietHours",
    "Recipient",
    "ReceiptStatus",
    "RecordBundle",
    "BundledRecord",
    "Rejection",
    "RenderedContent",
    "TemplatePart",
    "TemplateUpserted",
    "utc_millis",
]


def utc_millis(value: datetime) -> datetime:
    """A timestamp-millis value: UTC-aware (naive means UTC, as fastavro writes it), whole ms."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    if value.microsecond % 1000:
        value = value.replace(microsecond=value.microsecond - value.microsecond % 1000)
    return value


# Avro primitive and logical types as annotated Python types.
AvroInt = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
AvroLong = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TimestampMillis = Annotated[datetime, AfterValidator(utc_millis)]


class AvroModel(BaseModel):
    """Base of every Herald record model."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    def to_avro(self) -> dict[str, Any]:
        """The record as fastavro's writer takes it."""
        return self.model_dump(mode="python")

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Self:
        """The model of a record as fastavro's reader (AvroSerde.decode) returns it."""
        return cls.model_validate(record)


# --------------------------------------------------------------------------------------------------
# Enums


class Channel(StrEnum):
    """A delivery channel."""

    email = "email"
    sms = "sms"
    push = "push"
    in_app = "in_app"
    chat = "chat"


class Priority(StrEnum):
    """Delivery priority; high goes to the .high delivery topics and never waits behind bulk."""

    low = "low"
    normal = "normal"
    high = "high"


class LifecycleStatus(StrEnum):
    """What happened to a notification."""

    accepted = "accepted"
    rejected = "rejected"
    rendered = "rendered"
    routed = "routed"
    suppressed = "suppressed"
    scheduled = "scheduled"
    sent = "sent"
    delivered = "delivered"
    failed = "failed"
    retried = "retried"
    dead_lettered = "dead_lettered"
    opened = "opened"
    clicked = "clicked"
    read = "read"
    expired = "expired"
    deferred = "deferred"
    digested = "digested"


class InboxEventKind(StrEnum):
    """What happened in an inbox: a message arrived, or the user read or saw one."""

    message = "message"
    read = "read"
    seen = "seen"


# --------------------------------------------------------------------------------------------------
# Named records used inside others


class Recipient(AvroModel):
    """A recipient: a user id plus the contacts the caller knows; preferences fill in the rest."""

    user_id: str
    """Stable user id in the caller's system; key of the preference table."""
    email: str | None = None
    """Email address, overriding the one in preferences."""
    phone: str | None = None
    """Phone number in E.164 form, overriding the one in preferences."""
    push_tokens: list[str] = Field(default_factory=list)
    """Device tokens for mobile or web push."""
    locale: str | None = None
    """BCP 47 locale, e.g. en or pt-BR; null means the preference or the template default."""
    time_zone: str | None = None
    """IANA time zone, e.g. Europe/Paris; null means the preference or UTC."""


class RenderedContent(AvroModel):
    """One channel's content after rendering."""

    channel: Channel
    subject: str | None = None
    """Email subject, push or chat title."""
    text: str | None = None
    """Plain-text body (email text part, SMS, push body, in-app, chat)."""
    html: str | None = None
    """HTML body (email only), autoescaped."""
    data: dict[str, str] = Field(default_factory=dict)
    """Extra channel data, e.g. push payload or deep link."""


class Fallback(AvroModel):
    """Where to deliver instead when a delivery fails for good."""

    channel: Channel
    address: str
    content: RenderedContent


class BatchRecipient(AvroModel):
    """One recipient of a batch with its own variables."""

    recipient: Recipient
    variables: dict[str, str] = Field(default_factory=dict)
    """Values for this recipient only."""
    idempotency_key: str | None = None
    """Key for this recipient's notification."""


class TemplatePart(AvroModel):
    """A template's source for one channel (Jinja2, rendered sandboxed)."""

    channel: Channel
    subject: str | None = None
    """Subject or title template."""
    text: str | None = None
    """Plain-text body template."""
    html: str | None = None
    """HTML body template (email), autoescaped."""


class FrequencyCap(AvroModel):
    """At most `limit` notifications of this template's category per user and channel in any `period_s` seconds."""

    AVRO_NAME: ClassVar[str] = "FrequencyCap"

    channel: str = "*"
    """Channel the cap counts, or '*' for each channel."""
    limit: AvroInt
    period_s: AvroInt
    """Period, in seconds (3600 for an hour, 86400 for a day)."""


class OverCap(StrEnum):
    """What happens to a notification over a frequency cap."""

    suppress = "suppress"
    defer = "defer"


class DigestSpec(AvroModel):
    """Gather a user's notifications of this template into one, sent when the window closes."""

    AVRO_NAME: ClassVar[str] = "DigestSpec"

    key: str | None = None
    """Variable whose value separates digests (e.g. a project id); null: one digest per user and template."""
    window_s: AvroInt
    """Seconds from the first notification gathered to the digest's sending."""
    max_items: AvroInt = 100
    """The digest is sent early once it holds this many."""


class QuietHours(AvroModel):
    """A daily window, in the user's time zone, when non-urgent notifications wait."""

    start: str
    """Start, HH:MM."""
    end: str
    """End, HH:MM; may be before start (overnight)."""


class OptOut(AvroModel):
    """A user's opt-out of one channel for one category ('*' for every category)."""

    category: str
    """Category, or '*' for all."""
    channel: Channel


# --------------------------------------------------------------------------------------------------
# Top-level records (one .avsc file each)


class NotificationRequest(AvroModel):
    """One notification a business service asks Herald to send (herald.requests)."""

    AVRO_NAME: ClassVar[str] = "NotificationRequest"

    tenant: str = "default"
    idempotency_key: str | None = None
    """Caller's key; a repeat of a key Herald has seen is dropped at ingest."""
    template_id: str
    template_version: AvroInt | None = None
    """Template version to render; null means the latest."""
    recipient: Recipient
    variables: dict[str, str] = Field(default_factory=dict)
    channels: list[Channel] = Field(default_factory=list)
    """Channels to deliver on; empty means every channel the template has a part for."""
    category: str = "transactional"
    priority: Priority = Priority.normal
    send_at: TimestampMillis | None = None
    expires_at: TimestampMillis | None = None
    """Latest time to deliver; after it the notification is expired, never sent late."""
    """Earliest time to deliver; null means now."""
    fallback_channel: Channel | None = None
    """Channel to try when every attempt on the first one failed."""
    requested_at: TimestampMillis | None = None
    """When the caller produced the request; start of the end-to-end latency."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Free-form caller data carried through to lifecycle events' consumers."""


class NotificationBatch(AvroModel):
    """Many notifications of one template in one message: one per recipient after ingest."""

    AVRO_NAME: ClassVar[str] = "NotificationBatch"

    tenant: str = "default"
    batch_id: str | None = None
    """Caller's id for the batch, copied onto every notification."""
    idempotency_key: str | None = None
    """Caller's key for the whole batch; recipient i gets key '<key>:<i>' unless it has its own."""
    template_id: str
    template_version: AvroInt | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    """Values shared by every recipient; a recipient's own values win."""
    recipients: list[BatchRecipient]
    channels: list[Channel] = Field(default_factory=list)
    category: str = "transactional"
    priority: Priority = Priority.normal
    send_at: TimestampMillis | None = None
    expires_at: TimestampMillis | None = None
    """Latest time to deliver; after it the notification is expired, never sent late."""
    fallback_channel: Channel | None = None
    requested_at: TimestampMillis | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class Notification(AvroModel):
    """A notification on its way through the stages (herald.accepted, .validated, .rendered)."""

    AVRO_NAME: ClassVar[str] = "Notification"

    notification_id: uuid.UUID
    """Herald's id for the notification, stamped at ingest."""
    tenant: str = "default"
    batch_id: str | None = None
    idempotency_key: str | None = None
    template_id: str
    template_version: AvroInt | None = None
    """The requested version until the template stage, then the one rendered."""
    recipient: Recipient
    variables: dict[str, str] = Field(default_factory=dict)
    digest_items: list[dict[str, str]] = Field(default_factory=list)
    """On a digest: the variables of each notification it gathered, oldest first; rendered as `items`."""
    channels: list[Channel] = Field(default_factory=list)
    category: str = "transactional"
    priority: Priority = Priority.normal
    send_at: TimestampMillis | None = None
    expires_at: TimestampMillis | None = None
    """Latest time to deliver; after it the notification is expired, never sent late."""
    fallback_channel: Channel | None = None
    requested_at: TimestampMillis | None = None
    received_at: TimestampMillis
    """When ingest accepted the notification."""
    metadata: dict[str, str] = Field(default_factory=dict)
    rendered: list[RenderedContent] = Field(default_factory=list)
    """Content per channel, filled in by the template stage."""


class DeliveryTask(AvroModel):
    """One notification to deliver on one channel (herald.deliver.<channel>, herald.retry.<delay>)."""

    AVRO_NAME: ClassVar[str] = "DeliveryTask"

    notification_id: uuid.UUID
    tenant: str = "default"
    channel: Channel
    address: str
    """Email address, phone number, push token, user id (in-app) or webhook URL (chat)."""
    recipient: Recipient
    content: RenderedContent
    template_id: str
    template_version: AvroInt
    category: str = "transactional"
    priority: Priority = Priority.normal
    fallback_channel: Channel | None = None
    attempt: AvroInt = 0
    """Delivery attempt, 0 for the first."""
    due_at: TimestampMillis | None = None
    """On a retry topic: not before this time."""
    awaiting_receipt: bool = False
    """A watch, not a send: at due_at deliver sends the fallback unless the provider reported this delivery delivered."""
    expires_at: TimestampMillis | None = None
    """Latest time to deliver; after it the notification is expired, never sent late."""
    fallback: Fallback | None = None
    """Sent once on the fallback channel when this delivery fails for good."""
    requested_at: TimestampMillis | None = None
    received_at: TimestampMillis
    metadata: dict[str, str] = Field(default_factory=dict)


class LifecycleEvent(AvroModel):
    """Something that happened to a notification (herald.events); one row in notification_events."""

    AVRO_NAME: ClassVar[str] = "LifecycleEvent"

    event_id: uuid.UUID
    """Unique id of this event; the ClickHouse sink deduplicates on it."""
    notification_id: uuid.UUID
    tenant: str = "default"
    status: LifecycleStatus
    stage: str
    """Stage that emitted the event: ingest, validate, template, route, deliver, track, gateway."""
    channel: Channel | None = None
    provider: str | None = None
    """Provider adapter that handled the delivery."""
    template_id: str | None = None
    category: str | None = None
    priority: Priority = Priority.normal
    attempt: AvroInt = 0
    error_code: str | None = None
    """Reason or error code for rejected, suppressed, failed and dead_lettered events."""
    detail: str | None = None
    latency_ms: AvroLong | None = None
    """Milliseconds from requested_at (or received_at) to this event."""
    occurred_at: TimestampMillis


class Rejection(AvroModel):
    """A notification a stage refused, with the reason (herald.rejected)."""

    AVRO_NAME: ClassVar[str] = "Rejection"

    notification_id: uuid.UUID
    tenant: str = "default"
    stage: str
    reason_code: str
    """Machine-readable reason, e.g. unknown_template, missing_variable, invalid_email."""
    detail: str
    """Human-readable detail naming the field or variable."""
    original: bytes
    """The notification as it reached the stage, framed Avro."""
    rejected_at: TimestampMillis


class DeadLetter(AvroModel):
    """A message Herald could not process, kept whole (herald.dlq)."""

    AVRO_NAME: ClassVar[str] = "DeadLetter"

    stage: str
    reason_code: str
    """Machine-readable reason, e.g. undecodable, retries_exhausted."""
    detail: str
    topic: str
    partition: AvroInt = -1
    offset: AvroLong = -1
    original_key: bytes | None = None
    original_value: bytes | None = None
    headers: dict[str, bytes] = Field(default_factory=dict)
    notification_id: uuid.UUID | None = None
    """The notification's id when it is known."""
    failed_at: TimestampMillis


class TemplateUpserted(AvroModel):
    """A template version was created or replaced (herald.templates, compacted, keyed by template id)."""

    AVRO_NAME: ClassVar[str] = "TemplateUpserted"

    template_id: str
    tenant: str = "default"
    """Tenant that owns the template; another tenant's notifications never render it."""
    version: AvroInt
    """Version number; notifications render the latest unless they name one."""
    locale: str = "en"
    parts: list[TemplatePart]
    """One part per channel the template supports."""
    variables: list[str] = Field(default_factory=list)
    """Variables the template declares; validate requires each."""
    category: str = "transactional"
    critical: bool = False
    """Critical notifications (security alerts, OTPs) are never held by the recipient's quiet hours."""
    frequency_caps: list[FrequencyCap] = Field(default_factory=list)
    """Frequency caps; every one must allow a notification for it to go."""
    over_cap: OverCap = OverCap.suppress
    digest: DigestSpec | None = None
    deleted: bool = False
    """True tombstones this version."""
    updated_at: TimestampMillis


class PreferencesUpdated(AvroModel):
    """A user's contacts and channel preferences, whole (herald.preferences, compacted, by user id)."""

    AVRO_NAME: ClassVar[str] = "PreferencesUpdated"

    user_id: str
    tenant: str = "default"
    email: str | None = None
    phone: str | None = None
    """Phone number, E.164."""
    push_tokens: list[str] = Field(default_factory=list)
    chat_webhook: str | None = None
    """Chat webhook URL (Slack and the like)."""
    locale: str | None = None
    time_zone: str | None = None
    quiet_hours: QuietHours | None = None
    opt_outs: list[OptOut] = Field(default_factory=list)
    """Channels opted out of, per category."""
    updated_at: TimestampMillis


class ContactRemoved(AvroModel):
    """A provider said an address is dead; it is not used again until preferences are updated after it
    (herald.contacts.removed, compacted)."""

    AVRO_NAME: ClassVar[str] = "ContactRemoved"

    tenant: str = "default"
    user_id: str
    channel: Channel
    address: str
    provider: str
    reason_code: str
    detail: str | None = None
    notification_id: uuid.UUID
    removed_at: TimestampMillis


class InboxEvent(AvroModel):
    """Something that happened in a user's in-app inbox (herald.inbox, keyed by '<tenant>/<user_id>')."""

    AVRO_NAME: ClassVar[str] = "InboxEvent"

    event_id: uuid.UUID
    """A message's is uuid5 of its notification, tenant and user, so a resend has the same id."""
    kind: InboxEventKind
    tenant: str = "default"
    user_id: str
    notification_id: uuid.UUID
    subject: str | None = None
    """A message's title; null for read and seen."""
    text: str | None = None
    """A message's plain-text body; null for read and seen."""
    data: dict[str, str] = Field(default_factory=dict)
    """A message's extra data, e.g. a deep link; empty for read and seen."""
    category: str | None = None
    template_id: str | None = None
    occurred_at: TimestampMillis


class NotificationCancelled(AvroModel):
    """A caller cancelled a notification before it was delivered (herald.cancellations, compacted)."""

    AVRO_NAME: ClassVar[str] = "NotificationCancelled"

    notification_id: uuid.UUID
    tenant: str = "default"
    cancelled_at: TimestampMillis


class ApiKeyChanged(AvroModel):
    """A tenant's API key was created or revoked (herald.tenants, compacted, keyed by key id)."""

    AVRO_NAME: ClassVar[str] = "ApiKeyChanged"

    key_id: str
    tenant: str
    secret_sha256: str
    created_at: TimestampMillis
    revoked_at: TimestampMillis | None = None


class ReceiptStatus(StrEnum):
    """What the provider reported."""

    delivered = "delivered"
    failed = "failed"


class DeliveryReceipt(AvroModel):
    """A provider's final word on a delivery it had accepted (herald.receipts, compacted, by notification and channel)."""

    AVRO_NAME: ClassVar[str] = "DeliveryReceipt"

    notification_id: uuid.UUID
    tenant: str = "default"
    channel: Channel
    """The channel the provider delivered on (or failed to)."""
    status: ReceiptStatus
    provider: str | None = None
    """The provider that reported it."""
    error_code: str | None = None
    """The provider's error code, when it failed."""
    received_at: TimestampMillis
    """When Herald received the report."""


class BundledRecord(AvroModel):
    """One record of the bundle: its own key and its own framed Avro value."""

    key: bytes | None = None
    """The record's key (what it would be keyed by on its own)."""
    value: bytes
    """The record, framed as any Herald value (single-object or Confluent), so each record keeps its own writer schema."""


class RecordBundle(AvroModel):
    """A bounded batch of records in one Kafka message, on Herald's internal topics between stages."""

    AVRO_NAME: ClassVar[str] = "RecordBundle"

    records: list[BundledRecord]
    """The records, in the order they were produced."""


#: Every top-level model, by Avro short name.
MODELS: dict[str, type[AvroModel]] = {
    m.AVRO_NAME: m  # type: ignore[attr-defined]
    for m in (
        NotificationRequest,
        NotificationBatch,
        Notification,
        DeliveryTask,
        LifecycleEvent,
        Rejection,
        DeadLetter,
        TemplateUpserted,
        PreferencesUpdated,
        ContactRemoved,
        NotificationCancelled,
        ApiKeyChanged,
        DeliveryReceipt,
        RecordBundle,
        InboxEvent,
    )
}
