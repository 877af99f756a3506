"""ingest: herald.requests → herald.accepted.

Decodes each request (NotificationRequest or NotificationBatch), stamps notification_id and
received_at, expands a batch into one notification per recipient, and drops repeats of an
idempotency key seen within `idempotency_ttl_s` (the stage's own state, folded from
herald.state.idempotency-keys). A batch member whose key an earlier member of the same batch has
is rejected (`duplicate_member_key`) rather than sharing its notification id. Undecodable bytes go
to herald.dlq (the runtime does that).
"""

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from streams.codec import Envelope
from streams.ids import idempotency_scope, member_key, member_position, notification_id
from streams.stage import Context, Incoming, Outputs, StageSpec, StateSpec, now_utc
from streams.tables import StateTable
from streams.topics import ACCEPTED, EVENTS, IDEMPOTENCY_KEYS, REJECTED, REQUESTS

COMMON_FIELDS = ("tenant", "template_id", "template_version", "channels", "category", "priority",
                 "send_at", "expires_at", "fallback_channel", "requested_at", "metadata")


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


def seen_key(scope: str) -> str:
    return hashlib.blake2b(scope.encode(), digest_size=16).hexdigest()


def is_repeat(out: Outputs, seen: StateTable, scope: str, position: str) -> bool:
    """A repeat is the same key from another request. The same request read again after a crash
    is not a repeat: it must flow on (later stages drop what they already did by notification id).

    The state holds a 128-bit digest of the tenant's key, not the key: every entry has the same
    small size however long the key a producer sent."""
    first = out.pending_state(seen, seen_key(scope))
    if first is None:
        out.put_state(seen, seen_key(scope), position)
        return False
    return first != position


def refuse_duplicate_member(out: Outputs, record: dict[str, Any], position: str, index: int, first: int) -> None:
    """A batch member whose idempotency key an earlier member of the same batch has (its own key, or one
    derived from the batch key, see `member_key`). The key's notification id is the earlier member's, so
    this one is rejected under the id of its own position, which a re-read gives again."""
    key = record["idempotency_key"]
    shown = key if len(key) <= 200 else f"{key[:200]}…"
    refused = record | {"notification_id": notification_id(record["tenant"], None, member_position(position, index))}
    out.reject(refused, "duplicate_member_key",
               f"recipient {index} of the batch has idempotency key {shown!r}, as recipient {first} does; "
               f"only recipient {first} is accepted")


def accept(batch: list[Incoming], context: Context) -> Outputs:
    out = context.outputs()
    seen = context.state[IDEMPOTENCY_KEYS.name]
    now = now_utc()
    for request in batch:
        first_with: dict[str, int] = {}  # idempotency key -> the first member of this request that has it
        for index, record in enumerate(expand(Envelope(request.schema, request.value), request.position, now)):
            key = record["idempotency_key"]
            if key:
                if is_repeat(out, seen, idempotency_scope(record["tenant"], key), request.position):
                    continue
                if key in first_with:
                    refuse_duplicate_member(out, record, request.position, index, first_with[key])
                    continue
                first_with[key] = index
            out.send(ACCEPTED, record["notification_id"].bytes, record)
            out.event(record, "accepted")
    return out


INGEST = StageSpec(
    name="ingest",
    doc=__doc__ or "",
    inputs=(REQUESTS,),
    outputs=(ACCEPTED, EVENTS, IDEMPOTENCY_KEYS, REJECTED),
    handle=accept,
    state=(StateSpec(IDEMPOTENCY_KEYS, "idempotency_ttl_s"),),
)
