"""digest: herald.digest → herald.validated, a user's notifications of a digest template sent as one.

The template stage sends here, keyed '<tenant>/<user_id>', each notification whose template declares
a digest (`digest: {key, window_s, max_items}`). This stage gathers them into windows, one per user,
template and value of the digest's key variable, held as per-user state
(herald.state.digest.users): the window opens with its first notification and closes `window_s`
later (the stage's tick) or once it holds `max_items`. Each gathered notification gets a `digested`
event naming its digest. A closed window becomes ONE Notification with `digest_items` (the
gathered notifications' variables, oldest first), sent to herald.validated for the template stage
to render (with `items` and `count`), then route and deliver as any other.

Sent once: a window keeps its items by notification id, so a record read again after a crash is
not gathered twice; the digest's id is derived from the user, the window and its first
notification, so a window closed again after a crash (digest sent, window not yet deleted) sends
the same id, which deliver's delivered table sends once. A closed window's notification ids are
remembered for `digest_sent_memory_s`, so one read again after its window closed (its offset was
not committed before a crash) is not sent in a second digest.

A notification cancelled (herald.cancellations, folded here as deliver folds it) before its digest
goes is left out of it, with a `suppressed` event (code `cancelled`); a digest all of whose
notifications were cancelled is not sent.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime
from typing import Any

from streams.stage import Context, Incoming, Outputs, StageSpec, now_utc, user_key
from streams.tables import CancellationTable
from streams.topics import DIGEST, DIGEST_USERS, EVENTS, VALIDATED

DIGEST_NS = uuid.UUID("2d9a4c71-3b8e-4f06-a5d2-9c1e7b3f6a48")
# What a digest takes from the first notification of its window; the rest is the digest's own.
KEPT = ("tenant", "recipient", "template_id", "template_version", "channels", "category", "priority",
        "fallback_channel", "metadata", "variables")


def window_key(notification: dict[str, Any], spec: dict[str, Any]) -> str:
    """Which of a user's windows a notification joins: its template's, for its digest key's value."""
    value = notification["variables"].get(spec["key"], "") if spec["key"] else ""
    return json.dumps([notification["template_id"], value])


def open_window(notification: dict[str, Any], spec: dict[str, Any], user: str, key: str, now: datetime) -> dict[str, Any]:
    """A window opened by `notification`. The digest's id comes from its first notification, so the
    same records read again open a window with the same id."""
    return {
        "id": str(uuid.uuid5(DIGEST_NS, f"{user}\n{key}\n{notification['notification_id']}")),
        "due_at": now.timestamp() + spec["window_s"],
        "max_items": spec["max_items"],
        "first": {field: notification[field] for field in KEPT},
        "items": {},
        "bytes": 0,
    }


def item_bytes(notification: dict[str, Any]) -> int:
    return len(json.dumps(notification["variables"]))


def digest_notification(window: dict[str, Any], items: list[dict[str, str]], now: datetime) -> dict[str, Any]:
    """The Notification a closed window becomes: the first notification's fields and the items."""
    return {
        **window["first"],
        "notification_id": uuid.UUID(window["id"]),
        "batch_id": None,
        "idempotency_key": None,
        "digest_items": items,
        "send_at": None,
        "expires_at": None,
        "requested_at": None,
        "received_at": now,
        "rendered": [],
    }


class Windows:
    """One user's state: open windows by window key, and the digests sent lately (digest id →
    {"until": forget after, "ids": its notification ids}), in the JSON shape the state table keeps."""

    def __init__(self, value: dict[str, Any] | None) -> None:
        value = copy.deepcopy(value or {})  # the table's own value changes only once the write is acked
        self.open: dict[str, dict[str, Any]] = dict(value.get("open", {}))
        self.sent: dict[str, dict[str, Any]] = dict(value.get("sent", {}))

    def value(self) -> dict[str, Any] | None:
        """What to write: None (a tombstone) once nothing is open or remembered."""
        return {"open": self.open, "sent": self.sent} if self.open or self.sent else None

    def close(self, key: str, now: datetime, memory_s: float) -> dict[str, Any]:
        """Close a window and remember its notifications; returns it."""
        window = self.open.pop(key)
        self.sent[window["id"]] = {"until": now.timestamp() + memory_s, "ids": list(window["items"])}
        return window

    def due(self, now: datetime) -> list[str]:
        return [key for key, window in self.open.items() if window["due_at"] <= now.timestamp()]

    def sent_in(self, nid: str) -> str | None:
        """The digest a notification was sent in lately, if it was."""
        return next((digest_id for digest_id, sent in self.sent.items() if nid in sent["ids"]), None)

    def forget_sent(self, now: datetime) -> None:
        """Drop the sent digests whose time is up."""
        self.sent = {digest_id: sent for digest_id, sent in self.sent.items() if sent["until"] > now.timestamp()}


def next_due(value: dict[str, Any]) -> float:
    """When a user's state next has something to do: a window to close or a sent digest to forget."""
    return min([window["due_at"] for window in value.get("open", {}).values()]
               + [sent["until"] for sent in value.get("sent", {}).values()], default=float("inf"))


def gather(windows: Windows, notification: dict[str, Any], spec: dict[str, Any], user: str, now: datetime,
           max_bytes: int, memory_s: float) -> tuple[str, list[dict[str, Any]]]:
    """Put a notification in its window: the digest id it is gathered into, and the windows closed
    (its window when full; before that, the window it would make too big for one record)."""
    nid = str(notification["notification_id"])
    sent_in = windows.sent_in(nid)
    if sent_in is not None:  # read again after its window closed
        return sent_in, []
    key = window_key(notification, spec)
    closed = []
    window = windows.open.get(key)
    size = item_bytes(notification)
    if window is not None and nid not in window["items"] and window["items"] and window["bytes"] + size > max_bytes:
        closed.append(windows.close(key, now, memory_s))
        window = None
    if window is None:
        window = windows.open[key] = open_window(notification, spec, user, key, now)
    if nid not in window["items"]:
        window["items"][nid] = notification["variables"]
        window["bytes"] += size
    if len(window["items"]) >= window["max_items"]:
        closed.append(windows.close(key, now, memory_s))
    return window["id"], closed


def send_digests(out: Outputs, closed: list[dict[str, Any]], now: datetime, cancelled: CancellationTable) -> None:
    """Each closed window's digest, less the notifications cancelled since they were gathered (with a
    `suppressed` event each); none when every one of them was."""
    for window in closed:
        items = []
        for nid, variables in window["items"].items():
            gathered = {**window["first"], "notification_id": uuid.UUID(nid), "requested_at": None, "received_at": now}
            if cancelled.cancels(gathered):  # a window is one user's, of one tenant: the first's
                out.event(gathered, "suppressed", error_code="cancelled", detail=f"cancelled before digest {window['id']} went")
            else:
                items.append(variables)
        if items:
            digest = digest_notification(window, items, now)
            out.send(VALIDATED, digest["notification_id"].bytes, digest)
            out.event(digest, "accepted", detail=f"digest of {len(items)} notifications")


def gather_all(batch: list[Incoming], context: Context) -> Outputs:
    assert context.templates is not None and context.cancellations is not None
    out = context.outputs()
    table = context.user_state[DIGEST_USERS.name]
    settings = context.settings
    # A window holds at most a quarter of a record: the digest and the user's state must each fit one.
    max_bytes = settings.max_record_bytes // 4
    now = now_utc()
    for record in batch:
        notification = record.value
        # The recipient's locale, not the preferred one: the stage folds no preferences (a
        # template's locale variants normally declare the same digest).
        template = context.templates.for_notification(notification, None)
        spec = template["digest"] if template is not None else None
        if spec is None:  # no digest any more (or no template): the template stage renders it alone
            out.send(VALIDATED, notification["notification_id"].bytes, notification)
            continue
        if context.cancellations.cancels(notification):
            out.event(notification, "suppressed", error_code="cancelled", detail="cancelled before it was gathered")
            continue
        user = user_key(notification)
        windows = Windows(out.pending_user_state(table, user))
        digest_id, closed = gather(windows, notification, spec, user, now, max_bytes, settings.digest_sent_memory_s)
        out.event(notification, "digested", detail=f"digest {digest_id}")
        send_digests(out, closed, now, context.cancellations)
        out.put_user_state(table, user, windows.value(), record.partition)
    return out


def close_due(context: Context) -> Outputs:
    """The tick: send the digest of every window whose time is up, and forget old sent digests."""
    assert context.cancellations is not None
    out = context.outputs()
    table = context.user_state[DIGEST_USERS.name]
    now = now_utc()
    for user, value in table.items():
        if next_due(value) > now.timestamp():  # most users, most ticks: nothing to copy or write
            continue
        windows = Windows(value)
        due = windows.due(now)
        windows.forget_sent(now)
        closed = [windows.close(key, now, context.settings.digest_sent_memory_s) for key in due]
        send_digests(out, closed, now, context.cancellations)
        out.put_user_state(table, user, windows.value(), table.partition_of(user))
    return out


DIGEST_STAGE = StageSpec(
    name="digest",
    doc=__doc__ or "",
    inputs=(DIGEST,),
    outputs=(VALIDATED, EVENTS),
    handle=gather_all,
    tables=("templates", "cancellations"),
    user_state=(DIGEST_USERS,),
    tick=close_due,
    tick_setting="digest_tick_s",
)
