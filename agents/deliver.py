"""deliver: herald.deliver.<channel>[.high] → the provider; the outcome → herald.events.

One agent per channel and priority, so high-priority traffic (OTP) never waits behind bulk. Tasks run
concurrently (up to `deliver_concurrency` per agent) and each message is acked only when its task is
done, so Faust commits past a message only once it was delivered, retried or failed.

Never twice to a provider: the `delivered` table (changelog-backed) records each (notification,
channel) once the provider accepted it and is checked before sending; the provider's idempotency
key (the email's Message-ID) covers the last gap, a crash between the provider's answer and the
table's changelog write.

Transient failures go to a retry topic (herald.retry.<delay>) with `due_at`; the retry agent sends
them back when due. After the last attempt: a `failed` and a `dead_lettered` event and herald.dlq.
"""

import asyncio
import random
import time
from datetime import timedelta
from typing import Any

import faust

from agents.channels.base import ChannelAdapter, Outcome, Result
from agents.channels.email import EmailAdapter
from agents.stage import Handler, Stage, lifecycle_event, now_utc
from streams.app import topic
from streams.dead_letters import dead_letter
from streams.settings import Settings, get_settings
from streams.tables import StateTable
from streams.topics import DELIVER_BY_NAME, DELIVERED, DLQ, RETRY, RETRY_DELAYS_S, deliver_topic


def retry_delay_s(attempt: int) -> int:
    """The retry tier for a failed attempt: 5 s, then 30 s, then 300 s for every later one."""
    return RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]


def due_in_s(delay_s: int, outcome: Outcome) -> float:
    """Jittered (±20 %) so retries of a burst do not return as a burst; never sooner than the provider asked."""
    return max(delay_s * random.uniform(0.8, 1.2), outcome.retry_after_s or 0.0)


def delivered_key(task: dict[str, Any]) -> str:
    return f"{task['notification_id']}/{task['channel']}"


class Deliverer:
    """Runs one task through its adapter and records what happened."""

    def __init__(self, stage: Stage, settings: Settings, adapters: dict[str, ChannelAdapter]) -> None:
        self.stage = stage
        self.settings = settings
        self.adapters = adapters
        self.retry = dict(zip(RETRY_DELAYS_S, RETRY))
        self.delivered = stage.needs(StateTable(settings, DELIVERED, lambda: stage.app.producer))
        # (notification, channel) → done, for tasks being sent right now: a replayed copy that
        # arrives while the first is still in flight waits for it instead of racing the table check.
        self.in_flight: dict[str, asyncio.Future[None]] = {}

    async def deliver(self, task: dict[str, Any], event: faust.EventT | None = None) -> None:
        key = delivered_key(task)
        while key in self.in_flight:
            await asyncio.shield(self.in_flight[key])
        if self.delivered.get(key) is not None:
            return  # sent before a crash or rebalance; this is the replay
        self.in_flight[key] = done = asyncio.get_running_loop().create_future()
        try:
            await self.attempt(task, key)
        finally:
            del self.in_flight[key]
            done.set_result(None)

    async def attempt(self, task: dict[str, Any], key: str) -> None:
        adapter = self.adapters[task["channel"]]
        outcome = await adapter.send(task)
        if outcome.result is Result.SENT:
            await self.delivered.put(key, [time.time()])
            await self.emit(task, "sent", adapter)
        elif outcome.result is Result.TRANSIENT and task["attempt"] + 1 < self.settings.delivery_max_attempts:
            await self.schedule_retry(task, outcome, adapter)
        else:
            await self.give_up(task, outcome, adapter)

    async def emit(self, task: dict[str, Any], status: str, adapter: ChannelAdapter,
                   outcome: Outcome | None = None) -> None:
        await self.stage.emit(lifecycle_event(
            task, status, self.stage.name, channel=task["channel"], provider=adapter.provider,
            attempt=task["attempt"], error_code=outcome.code if outcome else None,
            detail=outcome.detail if outcome else None,
        ))

    async def schedule_retry(self, task: dict[str, Any], outcome: Outcome, adapter: ChannelAdapter) -> None:
        delay = retry_delay_s(task["attempt"])
        await self.emit(task, "retried", adapter, outcome)
        retry = dict(task, attempt=task["attempt"] + 1,
                     due_at=now_utc() + timedelta(seconds=due_in_s(delay, outcome)))
        await self.stage.send(self.retry[delay], task["recipient"]["user_id"].encode(), retry)

    async def give_up(self, task: dict[str, Any], outcome: Outcome, adapter: ChannelAdapter) -> None:
        await self.emit(task, "failed", adapter, outcome)
        if outcome.result is Result.PERMANENT:
            return  # the provider's final word; nothing left to try
        await self.emit(task, "dead_lettered", adapter, Outcome(outcome.result, "retries_exhausted", outcome.detail))
        record = dead_letter(
            stage=self.stage.name, reason_code="retries_exhausted",
            detail=f"{task['attempt'] + 1} attempts; last: {outcome.code} {outcome.detail}",
            topic=deliver_topic(task["channel"]), value=self.stage.serde.encode("DeliveryTask", task),
            notification_id=task["notification_id"],
        )
        await self.stage.send(DLQ, task["recipient"]["user_id"].encode(), record)


async def run_concurrently(stream: faust.StreamT, handle: Handler, concurrency: int, stage: Stage) -> None:
    """Handle up to `concurrency` events at once; ack each one only when its handling finished."""
    window = asyncio.Semaphore(concurrency)
    in_flight: set[asyncio.Task[None]] = set()

    async def run(event: faust.EventT) -> None:
        try:
            await stage.handle_one(event, handle)
            event.ack()
        finally:
            window.release()

    async for event in stream.noack().events():
        await window.acquire()
        task = asyncio.create_task(run(event))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)


settings = get_settings()
stage = Stage("deliver")
app = stage.app
adapters: dict[str, ChannelAdapter] = {"email": stage.needs(EmailAdapter(settings))}
deliverer = Deliverer(stage, settings, adapters)


def deliver_agent(source: faust.TopicT) -> None:
    async def deliver_tasks(stream: faust.StreamT) -> None:
        await deliverer.delivered.wait_ready()
        await run_concurrently(stream, deliverer.deliver, settings.deliver_concurrency, stage)

    app.agent(source, name=f"deliver-{source.get_topic_name()}")(deliver_tasks)


async def send_back_when_due(task: dict[str, Any], event: faust.EventT) -> None:
    wait = (task["due_at"] - now_utc()).total_seconds() if task["due_at"] else 0
    if wait > 0:
        await asyncio.sleep(wait)  # the topic is in due order: one delay per topic
    await stage.send(DELIVER_BY_NAME[deliver_topic(task["channel"], task["priority"] == "high")], event.key, task)


def retry_agent(source: faust.TopicT) -> None:
    async def retry_when_due(stream: faust.StreamT) -> None:
        await stage.run(stream, send_back_when_due)

    app.agent(source, name=f"retry-{source.get_topic_name()}")(retry_when_due)


for name, spec in DELIVER_BY_NAME.items():
    if name.split(".")[2] in adapters:
        deliver_agent(topic(app, spec))
for spec in RETRY:
    retry_agent(topic(app, spec))


@app.timer(interval=300.0)
async def purge_delivered() -> None:
    await deliverer.delivered.purge(time.time() - settings.delivered_ttl_s, lambda sent: sent[0])
