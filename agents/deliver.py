"""deliver: herald.deliver.<channel>[.high] → the provider; the outcome → herald.events.

One agent per channel and priority, so high-priority traffic (OTP) never waits behind bulk. A batch's
tasks run concurrently (up to `deliver_concurrency`), and its offsets are committed only once every
task was delivered, retried or failed and those outcomes are in Kafka.

Never twice to a provider: the `delivered` state (herald.state.delivered) records each
(notification, channel) once the provider accepted it and is checked before sending; the provider's
idempotency key (the email's Message-ID) covers the last gap, a crash between the provider's answer
and the state write.

Transient failures go to a retry topic (herald.retry.<delay>) with `due_at`; the retry agent sends
them back when due. After the last attempt: a `failed` and a `dead_lettered` event and herald.dlq.

A notification's fallback channel gets one task when its delivery failed for good, or, on a channel
whose provider reports deliveries (SMS), when no `delivered` report (herald.receipts) came within
`fallback_after_s` of its category: a watch waits on herald.scheduled and is checked when due.
"""

import asyncio
import hashlib
import logging
import random
import time
from datetime import datetime, timedelta
from collections.abc import Iterable
from typing import Any

from agents.channels import CHANNELS
from agents.channels.base import ChannelAdapter, Outcome, Result
from streams.health import PROVIDER_SECONDS
from streams.logs import NOTIFICATION_ID
from streams.settings import Settings
from streams.stage import Context, Incoming, Outputs, StageSpec, StateSpec, now_utc
from streams.topics import (CONTACTS_REMOVED, DELIVER, DELIVER_BY_NAME, DELIVERED, DLQ, EVENTS, RETRY,
                            RETRY_DELAYS_S, SCHEDULED, deliver_topic)

log = logging.getLogger(__name__)
RETRY_BY_DELAY = dict(zip(RETRY_DELAYS_S, RETRY))
# How early a waiting agent may send a task on to deliver, which then waits until it is due.
FORWARD_EARLY_S = 0.5
# Topics whose tasks wait for their due_at: failed attempts (retry tiers) and scheduled sends.
WAITING_BY_NAME = {spec.name: spec for spec in (*RETRY, SCHEDULED)}


def retry_delay_s(attempt: int) -> int:
    """The retry tier for a failed attempt: 5 s, then 30 s, then 300 s for every later one."""
    return RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]


def due_in_s(delay_s: int, outcome: Outcome) -> float:
    """Jittered (±20 %) so retries of a burst do not return as a burst; never sooner than the provider asked."""
    return max(delay_s * random.uniform(0.8, 1.2), outcome.retry_after_s or 0.0)


def address_digest(address: str) -> str:
    return hashlib.blake2b(address.encode(), digest_size=6).hexdigest()


def delivered_key(task: dict[str, Any]) -> str:
    """A delivery's key in the delivered table: a channel may deliver to several addresses (devices)."""
    return f"{task['notification_id']}/{task['channel']}/{address_digest(task['address'])}"


async def deliver(batch: list[Incoming], context: Context) -> Outputs:
    """Send a batch of tasks (up to `deliver_concurrency` at once) or, from a retry topic, requeue them."""
    if batch[0].topic in WAITING_BY_NAME:
        return await requeue_when_due(batch, context)
    out = context.outputs()
    delivered = context.state[DELIVERED.name]
    todo: dict[str, Incoming] = {}
    now = now_utc()
    for record in batch:
        if record.value["awaiting_receipt"]:
            check_receipt(out, context, record.value)
            continue
        key = delivered_key(record.value)
        # Sent before a crash or rebalance (this is the replay), or twice in one batch: once is enough.
        if delivered.get(key) is not None or key in todo:
            continue
        if expired(record.value, now):
            expire(out, record.value, context.services[record.value["channel"]], now)
            continue
        if context.cancellations is not None and context.cancellations.cancels(record.value):
            out.event(record.value, "suppressed", channel=record.value["channel"], error_code="cancelled",
                      detail="cancelled by the caller before it was sent")
            continue
        todo[key] = record
    await wait_until_due(record.value for record in todo.values())
    window = asyncio.Semaphore(context.settings.deliver_concurrency)

    async def attempt(record: Incoming) -> Outcome:
        async with window:
            return await send(context, record.value)

    outcomes = await asyncio.gather(*(attempt(record) for record in todo.values()))
    for (key, record), outcome in zip(todo.items(), outcomes):
        record_outcome(out, context, record, key, outcome)
    return out


async def send(context: Context, task: dict[str, Any]) -> Outcome:
    """The provider's answer; an adapter that raises is a transient failure, never a lost batch."""
    NOTIFICATION_ID.set(str(task["notification_id"]))
    started = time.perf_counter()
    try:
        outcome = await context.services[task["channel"]].send(task)
    except Exception as exc:  # a bug in an adapter must not take the other tasks of the batch with it
        log.exception("deliver: %s adapter raised on %s", task["channel"], task["notification_id"])
        outcome = Outcome(Result.TRANSIENT, "adapter_error", f"{type(exc).__name__}: {exc}")
    PROVIDER_SECONDS.labels(task["channel"], outcome.result.value).observe(time.perf_counter() - started)
    return outcome


def record_outcome(out: Outputs, context: Context, record: Incoming, key: str, outcome: Outcome) -> None:
    task = record.value
    adapter = context.services[task["channel"]]
    if outcome.result is Result.SENT:
        out.put_state(context.state[DELIVERED.name], key, True)
        emit(out, task, "sent", adapter, outcome)  # the provider that took it, and its detail (SMS segments…)
        watch_for_receipt(out, context.settings, task)
    elif outcome.result is Result.TRANSIENT and task["attempt"] + 1 < context.settings.delivery_max_attempts:
        schedule_retry(out, task, outcome, adapter)
    else:
        give_up(out, record, outcome, adapter)


def expired(task: dict[str, Any], now: datetime) -> bool:
    """Past its `expires_at`: sending it now would be late (an OTP), so it is not sent at all."""
    return task["expires_at"] is not None and now >= task["expires_at"]


def expire(out: Outputs, task: dict[str, Any], adapter: ChannelAdapter, now: datetime) -> None:
    late = (now - task["expires_at"]).total_seconds()
    emit(out, task, "expired", adapter, Outcome(Result.PERMANENT, "expired",
                                                f"{late:.1f} s past expires_at after {task['attempt']} attempts"))


def emit(out: Outputs, task: dict[str, Any], status: str, adapter: ChannelAdapter,
         outcome: Outcome | None = None) -> None:
    provider = (outcome.provider if outcome else None) or adapter.provider
    out.event(task, status, channel=task["channel"], provider=provider, attempt=task["attempt"],
              error_code=outcome.code if outcome else None, detail=outcome.detail if outcome else None)


def schedule_retry(out: Outputs, task: dict[str, Any], outcome: Outcome, adapter: ChannelAdapter) -> None:
    delay = retry_delay_s(task["attempt"])
    emit(out, task, "retried", adapter, outcome)
    retry = dict(task, attempt=task["attempt"] + 1, due_at=now_utc() + timedelta(seconds=due_in_s(delay, outcome)))
    out.send(RETRY_BY_DELAY[delay], task["recipient"]["user_id"].encode(), retry)


def give_up(out: Outputs, record: Incoming, outcome: Outcome, adapter: ChannelAdapter) -> None:
    task = record.value
    emit(out, task, "failed", adapter, outcome)
    fall_back(out, task, f"failed for good ({outcome.code})")
    if outcome.result is Result.DEAD_ADDRESS:
        remove_contact(out, task, outcome, adapter)
        return
    if outcome.result is Result.PERMANENT:
        return  # the provider's final word; nothing left to try
    emit(out, task, "dead_lettered", adapter, Outcome(outcome.result, "retries_exhausted", outcome.detail))
    out.dead_letter(record, "retries_exhausted", f"{task['attempt'] + 1} attempts; last: {outcome.code} {outcome.detail}",
                    notification_id=task["notification_id"])


def fall_back(out: Outputs, task: dict[str, Any], why: str) -> None:
    """The delivery failed for good, or was not delivered in time: the fallback channel's task, once
    (it carries no fallback itself), and a `routed` event in the timeline saying why."""
    fallback = task["fallback"]
    if fallback is None:
        return
    instead = dict(task, channel=fallback["channel"], address=fallback["address"], content=fallback["content"],
                   attempt=0, due_at=None, fallback=None, awaiting_receipt=False)
    topic = DELIVER_BY_NAME[deliver_topic(fallback["channel"], task["priority"] == "high")]
    out.send(topic, task["recipient"]["user_id"].encode(), instead)
    out.event(instead, "routed", channel=fallback["channel"], error_code="fallback",
              detail=f"{task['channel']} {why}: falling back to {fallback['channel']}")


def fallback_after_s(settings: Settings, category: str) -> float | None:
    """How long a delivery may wait for its `delivered` report before its fallback goes (None: forever)."""
    waits = settings.fallback_after_s
    return waits.get(category, waits.get("*"))


def watch_for_receipt(out: Outputs, settings: Settings, task: dict[str, Any]) -> None:
    """Sent, with a fallback, on a channel whose provider reports deliveries: a watch on the waiting
    topic that comes back when the wait is over (`check_receipt`)."""
    wait = fallback_after_s(settings, task["category"])
    if task["fallback"] is None or wait is None or not CHANNELS[task["channel"]].reports_delivery:
        return
    watch = dict(task, awaiting_receipt=True, due_at=now_utc() + timedelta(seconds=wait))
    out.send(SCHEDULED, task["recipient"]["user_id"].encode(), watch)


def check_receipt(out: Outputs, context: Context, task: dict[str, Any]) -> None:
    """A watch came due: the fallback goes unless the provider reported the delivery delivered."""
    assert context.receipts is not None
    status = context.receipts.status(task["notification_id"], task["channel"])
    if status == "delivered":
        return
    reported = "reported failed by the provider" if status == "failed" else "not reported delivered"
    fall_back(out, task, f"{reported} within {fallback_after_s(context.settings, task['category']):g} s")


def remove_contact(out: Outputs, task: dict[str, Any], outcome: Outcome, adapter: ChannelAdapter) -> None:
    """The provider says the address is dead: a ContactRemoved, so route stops using it for the user."""
    user_id = task["recipient"]["user_id"]
    removal = {"tenant": task["tenant"], "user_id": user_id, "channel": task["channel"], "address": task["address"],
               "provider": outcome.provider or adapter.provider, "reason_code": outcome.code or "dead_address",
               "detail": outcome.detail, "notification_id": task["notification_id"], "removed_at": now_utc()}
    key = f"{task['tenant']}/{user_id}/{task['channel']}/{address_digest(task['address'])}"
    out.send(CONTACTS_REMOVED, key.encode(), removal)


async def requeue_when_due(batch: list[Incoming], context: Context) -> Outputs:
    """Back to the channel's deliver topic once due; what is not due yet goes back to its retry topic.

    The handler waits at most `retry_hold_s` for the earliest task: a longer wait would hold the
    batch's messages unacked, and Faust waits for unacked messages on every rebalance (a deploy or
    a scale-up would stall delivery for minutes).
    """
    out = context.outputs()
    waits = [due_in(record.value) for record in batch]
    held = min(max(min(waits), 0.0), context.settings.retry_hold_s)
    if held > 0:
        await asyncio.sleep(held)
    for record, wait in zip(batch, waits):
        task = record.value
        # A task due within FORWARD_EARLY_S goes on now, and deliver waits out the rest: going round
        # its waiting topic once more would make it later than that.
        if wait > held + FORWARD_EARLY_S:
            out.send(WAITING_BY_NAME[record.topic], record.key, task)
        else:
            out.send(DELIVER_BY_NAME[deliver_topic(task["channel"], task["priority"] == "high")], record.key, task)
    return out


async def wait_until_due(tasks: Iterable[dict[str, Any]]) -> None:
    """Tasks the waiting agents sent on a moment early (at most FORWARD_EARLY_S): never sent before due."""
    early = max((due_in(task) for task in tasks), default=0.0)
    if early > 0:
        await asyncio.sleep(min(early, FORWARD_EARLY_S))


def due_in(task: dict[str, Any]) -> float:
    """Seconds until a retry is due (0 or less: due)."""
    return (task["due_at"] - now_utc()).total_seconds() if task["due_at"] else 0.0


def adapters(settings: Settings) -> dict[str, ChannelAdapter]:
    return {name: channel.adapter(settings) for name, channel in CHANNELS.items()}


DELIVER_STAGE = StageSpec(
    name="deliver",
    doc=__doc__ or "",
    inputs=(*(spec for spec in DELIVER if spec.name.split(".")[2] in CHANNELS), *RETRY, SCHEDULED),
    outputs=(*RETRY, SCHEDULED, *DELIVER, DLQ, EVENTS, DELIVERED, CONTACTS_REMOVED),
    handle=deliver,
    state=(StateSpec(DELIVERED, "delivered_ttl_s"),),
    services=adapters,
    delayed_inputs=(*RETRY, SCHEDULED),
    tables=("cancellations", "receipts"),
    # A crash resends at most one chunk's deliveries (those the provider took before the state write).
    chunk_setting="deliver_concurrency",
)
