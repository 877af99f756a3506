"""route: herald.rendered → herald.deliver.<channel>[.high], one DeliveryTask per channel.

Applies the user's preferences: a channel the user opted out of for this category (or for '*'),
or one with no address to deliver to, is suppressed with a lifecycle event saying why. Each channel
(agents/channels) says where its addresses come from; a channel with several (push: one per
device) gets one task per address. High-priority
tasks go to the .high topics, which the deliver stage reads apart from bulk.
"""

from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple

from agents.channels import CHANNELS
from streams.stage import Context, Incoming, Outputs, StageSpec, now_utc
from streams.topics import DELIVER, DELIVER_BY_NAME, EVENTS, RENDERED, SCHEDULED, deliver_topic


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
    task.update(channel=content["channel"], address=to, content=content, attempt=0, due_at=None,
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


def route_all(batch: list[Incoming], context: Context) -> Outputs:
    assert context.preferences is not None
    out = context.outputs()
    for record in batch:
        notification = record.value
        user_id = notification["recipient"]["user_id"]
        tasks, suppressed = route(notification, context.preferences.get(notification["tenant"], user_id),
                                  context.preferences.dead(notification["tenant"], user_id))
        for s in suppressed:
            out.event(notification, "suppressed", channel=s.channel, error_code=s.reason_code, detail=s.detail)
        key = notification["recipient"]["user_id"].encode()
        high = notification["priority"] == "high"
        later = scheduled(notification)
        for task in tasks:
            if later:
                out.send(SCHEDULED, key, dict(task, due_at=notification["send_at"]))
                out.event(notification, "scheduled", channel=task["channel"], detail=f"until {notification['send_at']:%Y-%m-%dT%H:%M:%S.%fZ}")
            else:
                out.send(DELIVER_BY_NAME[deliver_topic(task["channel"], high)], key, task)
                out.event(notification, "routed", channel=task["channel"])
    return out


def scheduled(notification: dict[str, Any]) -> bool:
    """Whether to hold the notification's deliveries until its send_at (deliver's waiting agents do)."""
    return notification["send_at"] is not None and notification["send_at"] > now_utc()


ROUTE = StageSpec(
    name="route",
    doc=__doc__ or "",
    inputs=(RENDERED,),
    outputs=(*DELIVER, SCHEDULED, EVENTS),
    handle=route_all,
    tables=("preferences",),
)
