"""ingest: herald.requests → herald.accepted.

Decodes each request (NotificationRequest or NotificationBatch), stamps notification_id and
received_at, expands a batch into one notification per recipient, and drops repeats of an
idempotency key seen within `idempotency_ttl_s`. Undecodable bytes go to herald.dlq.
"""

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import faust

from agents.stage import Stage, lifecycle_event, now_utc
from streams.app import topic
from streams.codec import Envelope
from streams.ids import idempotency_scope, log_position, member_key, member_position, notification_id
from streams.settings import get_settings
from streams.tables import StateTable
from streams.topics import ACCEPTED, IDEMPOTENCY_KEYS, REQUESTS

COMMON_FIELDS = ("tenant", "template_id", "template_version", "channels", "category", "priority",
                 "send_at", "fallback_channel", "requested_at", "metadata")


def notification(request: Mapping[str, Any], recipient: Mapping[str, Any], variables: Mapping[str, str],
                 idempotency_key: str | None, position: str, batch_id: str | None, now: datetime) -> dict[str, Any]:
    record = {field: request[field] for field in COMMON_FIELDS}
    record.update(
        notification_id=notification_id(request["tenant"], idempotency_key, position),
        batch_id=batch_id,
        idempotency_key=idempotency_key,
        recipient=recipient,
        variables=dict(variables),
        received_at=now,
        rendered=[],
    )
    return record


def expand(envelope: Envelope, position: str, now: datetime) -> list[dict[str, Any]]:
    """The notifications in one request: one for a NotificationRequest, one per recipient of a batch."""
    request = envelope.record
    if envelope.schema == "NotificationRequest":
        return [notification(request, request["recipient"], request["variables"],
                             request["idempotency_key"], position, None, now)]
    batch_key = request["idempotency_key"]
    return [
        notification(
            request,
            member["recipient"],
            {**request["variables"], **member["variables"]},
            member_key(batch_key, member["idempotency_key"], index),
            member_position(position, index),
            request["batch_id"],
            now,
        )
        for index, member in enumerate(request["recipients"])
    ]


stage = Stage("ingest")
app = stage.app
requests = topic(app, REQUESTS)
# tenant/idempotency key → [log position, epoch seconds] of its first request. Purged after the TTL
# so memory stays bounded.
seen_keys = stage.needs(StateTable(get_settings(), IDEMPOTENCY_KEYS, lambda: app.producer))


async def is_repeat(scope: str, position: str) -> bool:
    """A repeat is the same key from another request. The same request read again after a crash
    is not a repeat: it must flow on (later stages drop what they already did by notification id)."""
    seen = seen_keys.get(scope)
    if seen is None:
        await seen_keys.put(scope, [position, time.time()])
        return False
    return seen[0] != position


async def accept(request: Envelope, event: faust.EventT) -> None:
    message = event.message
    position = log_position(message.topic, message.partition, message.offset)
    for record in expand(request, position, now_utc()):
        key = record["idempotency_key"]
        if key and await is_repeat(idempotency_scope(record["tenant"], key), position):
            continue
        await stage.send(ACCEPTED, record["notification_id"].bytes, record)
        await stage.emit(lifecycle_event(record, "accepted", stage.name))


@app.agent(requests)
async def ingest(stream: faust.StreamT) -> None:
    await seen_keys.wait_ready()
    await stage.run(stream, accept)


@app.timer(interval=60.0)
async def purge_idempotency_keys() -> None:
    await seen_keys.purge(time.time() - get_settings().idempotency_ttl_s, lambda seen: seen[1])
