"""Sample records for unit tests, as plain dicts in the shape AvroSerde.decode returns them
(uuid.UUID for uuid, UTC-aware datetimes for timestamp-millis, every field present).

Each builder takes keyword overrides; nested records (recipient, content) are built separately so
a test states exactly what it changes.
"""

import uuid
from datetime import UTC, datetime
from typing import Any

NOTIFICATION_ID = uuid.UUID("0b7d1e34-58c2-4c8e-9a51-2f6e0c1d9a77")
REQUESTED_AT = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
RECEIVED_AT = datetime(2024, 5, 6, 7, 8, 9, 623000, tzinfo=UTC)
UPDATED_AT = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)


def recipient(**overrides: Any) -> dict[str, Any]:
    return {"user_id": "user-1", "email": None, "phone": None, "push_tokens": [], "locale": None,
            "time_zone": None} | overrides


def request(**overrides: Any) -> dict[str, Any]:
    """A NotificationRequest."""
    return {
        "tenant": "acme", "idempotency_key": None, "template_id": "welcome", "template_version": None,
        "recipient": recipient(email="alice@example.com"), "variables": {"name": "Alice"},
        "channels": [], "category": "transactional", "priority": "normal", "send_at": None, "expires_at": None,
        "fallback_channel": None, "requested_at": REQUESTED_AT, "metadata": {"source": "unit"},
    } | overrides


def batch_member(user_id: str, variables: dict[str, str] | None = None, idempotency_key: str | None = None,
                 **recipient_fields: Any) -> dict[str, Any]:
    """A BatchRecipient."""
    return {"recipient": recipient(user_id=user_id, **recipient_fields), "variables": variables or {},
            "idempotency_key": idempotency_key}


def batch(**overrides: Any) -> dict[str, Any]:
    """A NotificationBatch of three recipients."""
    return {
        "tenant": "acme", "batch_id": "batch-7", "idempotency_key": None, "template_id": "welcome",
        "template_version": 2, "variables": {"name": "everyone", "product": "Herald"},
        "recipients": [
            batch_member("user-1", {"name": "Alice"}, email="alice@example.com"),
            batch_member("user-2", {}, phone="+33600000000"),
            batch_member("user-3", {"name": "Carol", "extra": "x"}),
        ],
        "channels": ["email"], "category": "marketing", "priority": "low", "send_at": None, "expires_at": None,
        "fallback_channel": "sms", "requested_at": REQUESTED_AT, "metadata": {},
    } | overrides


def content(channel: str = "email", **overrides: Any) -> dict[str, Any]:
    """A RenderedContent."""
    return {"channel": channel, "subject": "Hello Alice", "text": "Hi Alice", "html": "<p>Hi Alice</p>",
            "data": {}} | overrides


def notification(**overrides: Any) -> dict[str, Any]:
    """A Notification as the route stage sees it (rendered, template version settled)."""
    return {
        "notification_id": NOTIFICATION_ID, "tenant": "acme", "batch_id": None, "idempotency_key": None,
        "template_id": "welcome", "template_version": 3, "recipient": recipient(email="alice@example.com"),
        "variables": {"name": "Alice"}, "digest_items": [], "channels": ["email"], "category": "transactional",
        "priority": "normal", "send_at": None, "expires_at": None, "fallback_channel": None, "requested_at": REQUESTED_AT,
        "received_at": RECEIVED_AT, "metadata": {"source": "unit"}, "rendered": [content()],
    } | overrides


def part(channel: str = "email", **overrides: Any) -> dict[str, Any]:
    """A TemplatePart."""
    return {"channel": channel, "subject": "Hello {{ name }}", "text": "Hi {{ name }}",
            "html": "<p>Hi {{ name }}</p>"} | overrides


def template(template_id: str = "welcome", version: int = 1, locale: str = "en", **overrides: Any) -> dict[str, Any]:
    """A TemplateUpserted."""
    return {
        "template_id": template_id, "tenant": "default", "version": version, "locale": locale, "parts": [part("email")],
        "variables": ["name"], "category": "transactional", "digest": None, "deleted": False, "updated_at": UPDATED_AT,
    } | overrides


def preferences(user_id: str = "user-1", **overrides: Any) -> dict[str, Any]:
    """A PreferencesUpdated."""
    return {
        "user_id": user_id, "tenant": "acme", "email": None, "phone": None, "push_tokens": [],
        "chat_webhook": None, "locale": None, "time_zone": None, "quiet_hours": None, "opt_outs": [],
        "updated_at": UPDATED_AT,
    } | overrides


def delivery_task(**overrides: Any) -> dict[str, Any]:
    """A DeliveryTask for email."""
    return {
        "notification_id": NOTIFICATION_ID, "tenant": "acme", "channel": "email", "address": "alice@example.com",
        "recipient": recipient(email="alice@example.com"), "content": content(), "template_id": "welcome",
        "template_version": 3, "category": "transactional", "priority": "normal", "fallback_channel": None,
        "attempt": 0, "due_at": None, "awaiting_receipt": False, "expires_at": None, "fallback": None, "requested_at": REQUESTED_AT, "received_at": RECEIVED_AT, "metadata": {},
    } | overrides
