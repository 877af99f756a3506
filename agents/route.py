"""route: herald.rendered → herald.deliver.<channel>[.high], one DeliveryTask per channel.

Applies the user's preferences: a channel the user opted out of for this category (or for '*'),
or one with no address to deliver to, is suppressed with a lifecycle event saying why. Each channel
(agents/channels) says where its addresses come from; a channel with several (push: one per
device) gets one task per address. High-priority
tasks go to the .high topics, which the deliver stage reads apart from bulk.

Deliveries that must wait go to herald.scheduled with their `due_at`, where deliver's waiting agent
sends them on when due: a `send_at` ahead (`scheduled`), or the user's quiet hours
(agents/quiet_hours.py; `deferred` to the window's end, with that time in the event's detail).

The template's frequency caps (agents/caps.py) count, per user, category and channel, what route
let through; over a cap a channel's deliveries are `suppressed` (`frequency_cap`) or `deferred`
until the caps allow them, as the template's `over_cap` says. The counts are per-user state
(herald.state.route.users, streams/user_state.py), held by the worker that holds the user's
partition of herald.rendered.
"""

from collections.abc import Set as AbstractSet
from datetime import datetime
from typing import Any, NamedTuple

from agents.caps import Sends, caps_on, record_send, sends_key, verdict
from agents.channels import CHANNELS
from agents.quiet_hours import quiet_deferral
from streams.stage import Context, Incoming, Outputs, StageSpec, now_utc, user_key
from streams.topics import DELIVER, DELIVER_BY_NAME, EVENTS, RENDERED, ROUTE_USERS, SCHEDULED, deliver_topic


class Suppression(NamedTuple):
    channel: str
    reason_code: str
    detail: str


def opted_out(preferences: dict[str, Any] | None, category: str, channel: str) -> bool:
    return any(
        opt_out["channel"] == channel and opt_out["category"] in (category, "*")
        for opt_out in (preferences or {}).get("opt_outs", ())
    )


def delivery_task(notification: dict[str, Any], content: dict[str, Any], to: str,
                  fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    fields = ("notification_id", "tenant", "recipient", "template_id", "template_version", "category",
              "priority", "fallback_channel", "expires_at", "requested_at", "received_at", "metadata")
    task = {field: notification[field] for field in fields}
    task.update(channel=content["channel"], address=to, content=content, attempt=0, due_at=None, awaiting_receipt=False,
                fallback=fallback if fallback is not None and fallback["channel"] != content["channel"] else None)
    return task


def live_addresses(channel: str, notification: dict[str, Any], preferences: dict[str, Any] | None,
                   dead: AbstractSet[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """A channel's addresses for the notification, and those of them a provider has not said are dead."""
    addresses = CHANNELS[channel].addresses(notification["recipient"], preferences)
    return addresses, [to for to in addresses if (channel, to) not in dead]


def fallback_of(notification: dict[str, Any], preferences: dict[str, Any] | None,
                dead: AbstractSet[tuple[str, str]]) -> dict[str, Any] | None:
    """The Fallback deliver turns to when a delivery fails for good: the fallback channel's first
    live address and its rendered part; None without a fallback channel, or an address for it."""
    name = notification["fallback_channel"]
    if name is None or name not in CHANNELS or opted_out(preferences, notification["category"], name):
        return None
    content = next((c for c in notification["rendered"] if c["channel"] == name), None)
    _, live = live_addresses(name, notification, preferences, dead)
    return {"channel": name, "address": live[0], "content": content} if content and live else None


def route(notification: dict[str, Any], preferences: dict[str, Any] | None,
          dead: AbstractSet[tuple[str, str]] = frozenset()) -> tuple[list[dict[str, Any]], list[Suppression]]:
    """Delivery tasks for the channels that stay (one per live address), and why the others were
    suppressed. `dead` holds the (channel, address) pairs a provider said are dead. The fallback
    channel's part is not a delivery of its own: it rides on each task, for deliver to send once
    if that delivery fails for good."""
    tasks, suppressed = [], []
    fallback = fallback_of(notification, preferences, dead)
    for content in notification["rendered"]:
        name = content["channel"]
        if name not in notification["channels"]:
            continue  # the fallback's part
        if opted_out(preferences, notification["category"], name):
            suppressed.append(Suppression(name, "opted_out", f"user opted out of {name} for '{notification['category']}'"))
            continue
        channel = CHANNELS.get(name)
        if channel is None:  # validate refuses these; a notification from before a channel was removed
            suppressed.append(Suppression(name, "channel_unavailable", f"Herald has no {name} channel"))
            continue
        addresses, live = live_addresses(name, notification, preferences, dead)
        if not addresses:
            suppressed.append(Suppression(name, "no_address", f"no {channel.contact} for the user"))
            continue
        if not live:
            suppressed.append(Suppression(name, "dead_address", f"the provider said the user's {channel.contact} "
                                                                f"is dead: {', '.join(addresses)}"))
            continue
        tasks.extend(delivery_task(notification, content, to, fallback) for to in live)
    return tasks, suppressed


class Hold(NamedTuple):
    """Why and until when a notification's deliveries wait on herald.scheduled."""

    until: datetime
    status: str  # `scheduled` (its send_at) or `deferred` (the user's quiet hours, a frequency cap)
    detail: str


def hold(notification: dict[str, Any], preferences: dict[str, Any] | None, template: dict[str, Any] | None,
         now: datetime) -> Hold | None:
    """Until when the deliveries wait: the send_at ahead, or the end of the quiet hours the
    notification would go in (judged at its send_at, else now); None: they go now."""
    send_at = notification["send_at"]
    at = send_at if send_at is not None and send_at > now else now
    quiet = quiet_deferral(notification, preferences, template, at)
    if quiet is not None:
        return Hold(quiet.until, "deferred", quiet.reason)
    if at > now:
        return Hold(at, "scheduled", f"until {at:%Y-%m-%dT%H:%M:%S.%fZ}")
    return None


def emit_task(out: Outputs, notification: dict[str, Any], task: dict[str, Any], held: Hold | None) -> None:
    """A delivery task to its deliver topic now, or to herald.scheduled (deliver's waiting agent
    sends it on when due), with its lifecycle event."""
    key = notification["recipient"]["user_id"].encode()
    if held is None:
        out.send(DELIVER_BY_NAME[deliver_topic(task["channel"], notification["priority"] == "high")], key, task)
        out.event(notification, "routed", channel=task["channel"])
    else:
        out.send(SCHEDULED, key, dict(task, due_at=held.until))
        out.event(notification, held.status, channel=task["channel"], detail=held.detail)


def capped(state: dict[str, Sends], notification: dict[str, Any], preferences: dict[str, Any] | None,
           template: dict[str, Any] | None, channel: str, held: Hold | None, now: datetime) -> Hold | Suppression | None:
    """What the template's frequency caps (agents/caps.py) make of the channel's deliveries held as
    `held`: the same hold, a later one (`deferred`, within quiet hours still), or a Suppression.
    A delivery let through is recorded in `state`, the user's sends."""
    caps = caps_on(template, channel)
    if template is None or not caps:
        return held
    category, notification_id = notification["category"], str(notification["notification_id"])
    key = sends_key(category, channel)
    sends = state.get(key, [])
    found = verdict(sends, caps, notification_id, category, channel, held.until if held else now, template["over_cap"])
    if found.at is None:
        return Suppression(channel, "frequency_cap", found.detail or "")
    if found.detail is not None:
        quiet = quiet_deferral(notification, preferences, template, found.at)
        held = (Hold(found.at, "deferred", found.detail) if quiet is None
                else Hold(quiet.until, "deferred", f"{found.detail}; then {quiet.reason}"))
    state[key] = record_send(sends, caps, notification_id, held.until if held else now, now)
    return held


def route_all(batch: list[Incoming], context: Context) -> Outputs:
    assert context.preferences is not None and context.templates is not None
    users = context.user_state[ROUTE_USERS.name]
    out = context.outputs()
    now = now_utc()
    for record in batch:
        notification = record.value
        user_id = notification["recipient"]["user_id"]
        preferences = context.preferences.get(notification["tenant"], user_id)
        # The version template rendered; None when deleted since (then nothing is critical or capped).
        template = context.templates.for_notification(notification, preferences)
        dead = context.preferences.dead(notification["tenant"], user_id)
        tasks, suppressed = route(notification, preferences, dead)
        for s in suppressed:
            out.event(notification, "suppressed", channel=s.channel, error_code=s.reason_code, detail=s.detail)
        held = hold(notification, preferences, template, now)
        before = out.pending_user_state(users, user_key(notification)) or {}
        state = dict(before)
        for channel in dict.fromkeys(task["channel"] for task in tasks):
            outcome = capped(state, notification, preferences, template, channel, held, now)
            if isinstance(outcome, Suppression):
                out.event(notification, "suppressed", channel=channel, error_code=outcome.reason_code,
                          detail=outcome.detail)
                continue
            for task in tasks:
                if task["channel"] == channel:
                    emit_task(out, notification, task, outcome)
        if state != before:
            out.put_user_state(users, user_key(notification), state, record.partition)
    return out


ROUTE = StageSpec(
    name="route",
    doc=__doc__ or "",
    inputs=(RENDERED,),
    outputs=(*DELIVER, SCHEDULED, EVENTS, ROUTE_USERS),
    handle=route_all,
    # Templates for what the notification's template says of it: critical, frequency caps.
    tables=("templates", "preferences"),
    user_state=(ROUTE_USERS,),
)
