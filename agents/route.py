"""route: herald.rendered → herald.deliver.<channel>[.high], one DeliveryTask per channel.

Applies the user's preferences: a channel the user opted out of for this category (or for '*'),
or one with no address to deliver to, is suppressed with a lifecycle event saying why. High-priority
tasks go to the .high topics, which the deliver stage reads apart from bulk.
"""

from typing import Any, NamedTuple

import faust

from agents.stage import Stage, lifecycle_event
from streams.app import topic
from streams.settings import get_settings
from streams.tables import PreferenceTable
from streams.topics import DELIVER_BY_NAME, RENDERED, deliver_topic


class Suppression(NamedTuple):
    channel: str
    reason_code: str
    detail: str


def opted_out(preferences: dict[str, Any] | None, category: str, channel: str) -> bool:
    return any(
        opt_out["channel"] == channel and opt_out["category"] in (category, "*")
        for opt_out in (preferences or {}).get("opt_outs", ())
    )


def address(channel: str, recipient: dict[str, Any], preferences: dict[str, Any] | None) -> str | None:
    """Where to deliver on a channel: the request's contact first, then the user's preferences."""
    preferences = preferences or {}
    if channel == "email":
        return recipient["email"] or preferences.get("email")
    if channel == "sms":
        return recipient["phone"] or preferences.get("phone")
    if channel == "push":
        tokens = recipient["push_tokens"] or preferences.get("push_tokens") or []
        return tokens[0] if tokens else None
    if channel == "in_app":
        return recipient["user_id"]
    if channel == "chat":
        return preferences.get("chat_webhook")
    raise ValueError(f"unknown channel {channel}")


def delivery_task(notification: dict[str, Any], content: dict[str, Any], to: str) -> dict[str, Any]:
    fields = ("notification_id", "tenant", "recipient", "template_id", "template_version", "category",
              "priority", "fallback_channel", "requested_at", "received_at", "metadata")
    task = {field: notification[field] for field in fields}
    task.update(channel=content["channel"], address=to, content=content, attempt=0, due_at=None)
    return task


def route(notification: dict[str, Any], preferences: dict[str, Any] | None) -> tuple[list[dict[str, Any]], list[Suppression]]:
    """Delivery tasks for the channels that stay, and why the others were suppressed."""
    tasks, suppressed = [], []
    for content in notification["rendered"]:
        channel = content["channel"]
        if opted_out(preferences, notification["category"], channel):
            suppressed.append(Suppression(channel, "opted_out",
                                          f"user opted out of {channel} for '{notification['category']}'"))
            continue
        to = address(channel, notification["recipient"], preferences)
        if not to:
            suppressed.append(Suppression(channel, "no_address", f"no {channel} address for the user"))
            continue
        tasks.append(delivery_task(notification, content, to))
    return tasks, suppressed


stage = Stage("route")
app = stage.app
rendered = topic(app, RENDERED)
preferences = stage.needs(PreferenceTable(get_settings()))


async def route_one(notification: dict[str, Any], event: faust.EventT) -> None:
    tasks, suppressed = route(notification, preferences.get(notification["recipient"]["user_id"]))
    for s in suppressed:
        await stage.emit(lifecycle_event(notification, "suppressed", stage.name, channel=s.channel,
                                         error_code=s.reason_code, detail=s.detail))
    key = notification["recipient"]["user_id"].encode()
    for task in tasks:
        high = notification["priority"] == "high"
        await stage.send(DELIVER_BY_NAME[deliver_topic(task["channel"], high)], key, task)
        await stage.emit(lifecycle_event(notification, "routed", stage.name, channel=task["channel"]))


@app.agent(rendered)
async def route_notifications(stream: faust.StreamT) -> None:
    await preferences.wait_ready()
    await stage.run(stream, route_one)
