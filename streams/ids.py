"""Notification ids: derived, not random, so the gateway can answer with the id ingest will stamp,
and a request that ingest reads twice (at-least-once) gets the same id both times."""

import json
import uuid

NOTIFICATION_NS = uuid.UUID("6f1c1f5e-7a0e-4d1b-9a7c-3d0c8f1e2b55")


def log_position(topic: str, partition: int, offset: int) -> str:
    """Where a request sits in the log."""
    return f"{topic}/{partition}/{offset}"


def member_position(position: str, index: int) -> str:
    """Where one recipient of a batch sits: the batch's position and the recipient's index."""
    return f"{position}/{index}"


def notification_id(tenant: str, idempotency_key: str | None, position: str) -> uuid.UUID:
    """From the idempotency key when there is one (a repeat gets the same id), else from the position."""
    return uuid.uuid5(NOTIFICATION_NS, idempotency_scope(tenant, idempotency_key) if idempotency_key else f"pos/{position}")


def idempotency_scope(tenant: str, idempotency_key: str) -> str:
    """A tenant's key, unambiguous whatever characters either holds."""
    return json.dumps(["key", tenant, idempotency_key])


def member_key(batch_key: str | None, member_key: str | None, index: int) -> str | None:
    """A batch member's idempotency key: its own, else the batch's with its index."""
    return member_key or (f"{batch_key}:{index}" if batch_key else None)
