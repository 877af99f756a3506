"""Every stage's batch handler, run the way the runtime runs it (streams/runtime.py `StageRuntime.handle`),
on batches that mix good records, a poison record (one that makes the handler raise) and repeats.

No Kafka: the runtime's Faust app is built but never started; tables are folded by hand.
"""

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.channels.base import SENT, Outcome, Result
from agents.deliver import DELIVER_STAGE, delivered_key
from agents.ingest import INGEST, seen_key
from agents.registry import STAGES
from agents.route import ROUTE
from agents.template import TEMPLATE
from agents.validate import VALIDATE
from streams.codec import default_serde
from streams.ids import idempotency_scope
from streams.runtime import StageRuntime
from streams.settings import Settings
from streams.stage import Incoming, Outputs, StageSpec
from streams.tables import template_key
from streams.topics import (ACCEPTED, CONTACTS_REMOVED, DELIVER_BY_NAME, DELIVERED, DLQ, EVENTS, IDEMPOTENCY_KEYS, REJECTED, RENDERED, REQUESTS,
                            RETRY, SCHEDULED, VALIDATED, deliver_topic)
from tests.unit import records

SERDE = default_serde()


def runtime(spec: StageSpec, tmp_path: Path, **settings: Any) -> StageRuntime:
    stage = StageRuntime(spec, Settings(data_dir=tmp_path, **settings))
    if stage.context.templates is not None:
        stage.context.templates.fold(template_key("default", "welcome", "en", 1), records.template())
    return stage


def incoming(value: dict[str, Any], schema: str, topic: str, offset: int, key: bytes = b"k") -> Incoming:
    try:
        raw = SERDE.encode(schema, value)
    except Exception:  # a poison record: what it was on the wire does not matter here
        raw = b"poison"
    return Incoming(key=key, value=value, schema=schema, topic=topic, partition=0, offset=offset, raw=raw)


def notification_ids(out: Outputs, topic: Any) -> list[uuid.UUID]:
    return [record["notification_id"] for record in out.of(topic)]


def poison(record: dict[str, Any]) -> dict[str, Any]:
    """The record without a field the handler reads: a bug's KeyError, not a decode error."""
    return {k: v for k, v in record.items() if k not in ("recipient", "tenant")}


def test_the_registry_lists_every_stage_in_flow_order() -> None:
    assert list(STAGES) == ["ingest", "validate", "template", "digest", "route", "deliver", "track"]
    for spec in STAGES.values():
        assert spec.inputs and spec.doc


async def test_ingest_batch_with_a_poison_record_and_repeated_keys(tmp_path: Path) -> None:
    stage = runtime(INGEST, tmp_path)
    seen = stage.context.state[IDEMPOTENCY_KEYS.name]
    seen.fold(b"earlier-block", {"at": 1e12, "entries": {seen_key(idempotency_scope("acme", "old")): "herald.requests/0/1"}})
    batch = [
        incoming(records.request(idempotency_key="a"), "NotificationRequest", REQUESTS.name, 10),
        incoming(poison(records.request()), "NotificationRequest", REQUESTS.name, 11),
        incoming(records.request(idempotency_key="a"), "NotificationRequest", REQUESTS.name, 12),  # repeat in batch
        incoming(records.request(idempotency_key="old"), "NotificationRequest", REQUESTS.name, 13),  # seen before
        incoming(records.request(), "NotificationRequest", REQUESTS.name, 14),
    ]
    out = await stage.handle(batch)
    accepted = out.of(ACCEPTED)
    assert [n["idempotency_key"] for n in accepted] == ["a", None]
    assert [e["status"] for e in out.of(EVENTS)] == ["accepted", "accepted"]
    [letter] = out.of(DLQ)
    assert (letter["reason_code"], letter["offset"]) == ("processing_error", 11)
    assert "KeyError" in letter["detail"]
    # The first request with key "a" is remembered, by its position.
    [block] = out.state_blocks("herald.requests/0/10")
    assert block.topic == IDEMPOTENCY_KEYS


async def test_ingest_reads_the_same_request_again_after_a_crash(tmp_path: Path) -> None:
    stage = runtime(INGEST, tmp_path)
    seen = stage.context.state[IDEMPOTENCY_KEYS.name]
    seen.fold(b"b", {"at": 1e12, "entries": {seen_key(idempotency_scope("acme", "a")): "herald.requests/0/10"}})
    out = await stage.handle([incoming(records.request(idempotency_key="a"), "NotificationRequest", REQUESTS.name, 10)])
    assert len(out.of(ACCEPTED)) == 1  # same position: not a repeat, it flows on


async def test_validate_batch(tmp_path: Path) -> None:
    stage = runtime(VALIDATE, tmp_path)
    good = records.notification(rendered=[], template_version=None, notification_id=uuid.UUID(int=1))
    unknown = records.notification(rendered=[], template_version=None, notification_id=uuid.UUID(int=2), template_id="nope")
    batch = [incoming(good, "Notification", ACCEPTED.name, 1), incoming(poison(good), "Notification", ACCEPTED.name, 2),
             incoming(unknown, "Notification", ACCEPTED.name, 3), incoming(good, "Notification", ACCEPTED.name, 4)]
    out = await stage.handle(batch)
    assert notification_ids(out, VALIDATED) == [uuid.UUID(int=1)] * 2  # the repeat flows on; later stages dedupe
    assert [(r["notification_id"], r["reason_code"]) for r in out.of(REJECTED)] == [(uuid.UUID(int=2), "unknown_template")]
    assert [d["offset"] for d in out.of(DLQ)] == [2]


async def test_template_batch(tmp_path: Path) -> None:
    stage = runtime(TEMPLATE, tmp_path)
    stage.context.templates.fold(template_key("default", "broken", "en", 1), records.template(
        "broken", parts=[records.part(text="{{ name.missing.deeper }}")]))
    good = records.notification(rendered=[], template_version=None, notification_id=uuid.UUID(int=1))
    broken = records.notification(rendered=[], template_version=None, notification_id=uuid.UUID(int=2), template_id="broken")
    batch = [incoming(good, "Notification", VALIDATED.name, 1), incoming(broken, "Notification", VALIDATED.name, 2),
             incoming(poison(good), "Notification", VALIDATED.name, 3)]
    out = await stage.handle(batch)
    [rendered] = out.of(RENDERED)
    assert rendered["rendered"][0]["subject"] == "Hello Alice"
    assert [r["reason_code"] for r in out.of(REJECTED)] == ["template_error"]
    assert [d["offset"] for d in out.of(DLQ)] == [3]


async def test_route_batch(tmp_path: Path) -> None:
    stage = runtime(ROUTE, tmp_path)
    stage.context.preferences.fold(b"user-2", records.preferences(
        "user-2", opt_outs=[{"category": "*", "channel": "email"}]))
    good = records.notification(notification_id=uuid.UUID(int=1))
    urgent = records.notification(notification_id=uuid.UUID(int=3), priority="high")
    opted_out = records.notification(notification_id=uuid.UUID(int=2), recipient=records.recipient(
        user_id="user-2", email="bob@example.com"))
    batch = [incoming(good, "Notification", RENDERED.name, 1), incoming(poison(good), "Notification", RENDERED.name, 2),
             incoming(opted_out, "Notification", RENDERED.name, 3), incoming(urgent, "Notification", RENDERED.name, 4)]
    out = await stage.handle(batch)
    assert notification_ids(out, DELIVER_BY_NAME[deliver_topic("email")]) == [uuid.UUID(int=1)]
    assert notification_ids(out, DELIVER_BY_NAME[deliver_topic("email", high=True)]) == [uuid.UUID(int=3)]
    statuses = [(e["notification_id"].int, e["status"]) for e in out.of(EVENTS)]
    assert statuses == [(1, "routed"), (2, "suppressed"), (3, "routed")]
    assert [d["offset"] for d in out.of(DLQ)] == [2]


class FakeAdapter:
    """An adapter whose answer depends on the address; deliver's real one is tested in test_email.py."""

    channel, provider = "email", "fake"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, task: dict[str, Any]) -> Outcome:
        if task["address"] == "boom@example.com":
            raise RuntimeError("adapter bug")
        if task["address"] == "busy@example.com":
            return Outcome(Result.TRANSIENT, "smtp_450", "busy")
        if task["address"] == "gone@example.com":
            return Outcome(Result.PERMANENT, "smtp_550", "no such user")
        if task["address"] == "dead@example.com":
            return Outcome(Result.DEAD_ADDRESS, "smtp_550_5_1_1", "mailbox does not exist", provider="relay-b")
        self.sent.append(task["address"])
        return SENT


async def test_deliver_batch(tmp_path: Path) -> None:
    stage = runtime(DELIVER_STAGE, tmp_path)
    adapter = FakeAdapter()
    stage.context.services = {"email": adapter}
    delivered = stage.context.state[DELIVERED.name]
    already = records.delivery_task(notification_id=uuid.UUID(int=9), address="old@example.com")
    delivered.fold(b"b", {"at": 1e12, "entries": {delivered_key(already): True}})

    def task(n: int, address: str) -> Incoming:
        value = records.delivery_task(notification_id=uuid.UUID(int=n), address=address)
        return incoming(value, "DeliveryTask", deliver_topic("email"), n)

    batch = [task(1, "a@example.com"), task(1, "a@example.com"), task(2, "busy@example.com"),
             task(3, "gone@example.com"), task(4, "boom@example.com"), task(9, "old@example.com")]
    out = await stage.handle(batch)
    assert adapter.sent == ["a@example.com"]  # once, though twice in the batch; never the delivered one
    statuses = sorted((e["notification_id"].int, e["status"]) for e in out.of(EVENTS))
    assert statuses == [(1, "sent"), (2, "retried"), (3, "failed"), (4, "retried")]
    retried = [r for spec in RETRY for r in out.of(spec)]
    assert sorted(r["notification_id"].int for r in retried) == [2, 4]
    assert all(r["attempt"] == 1 and r["due_at"] is not None for r in retried)
    [block] = out.state_blocks("x")
    assert list(delivered.decode(block.value)["entries"]) == [delivered_key(batch[0].value)]


async def test_deliver_expires_a_task_past_its_expires_at_and_sends_it_never(tmp_path: Path) -> None:
    stage = runtime(DELIVER_STAGE, tmp_path)
    adapter = FakeAdapter()
    stage.context.services = {"email": adapter}
    now = datetime.now(UTC)
    late = records.delivery_task(notification_id=uuid.UUID(int=1), attempt=2, expires_at=now - timedelta(seconds=3))
    timely = records.delivery_task(notification_id=uuid.UUID(int=2), expires_at=now + timedelta(minutes=5))
    out = await stage.handle([incoming(late, "DeliveryTask", deliver_topic("email"), 1),
                              incoming(timely, "DeliveryTask", deliver_topic("email"), 2)])
    assert adapter.sent == ["alice@example.com"]  # only the timely one
    events = {(e["notification_id"].int, e["status"]): e for e in out.of(EVENTS)}
    assert set(events) == {(1, "expired"), (2, "sent")}
    assert events[(1, "expired")]["error_code"] == "expired" and "after 2 attempts" in events[(1, "expired")]["detail"]


async def test_a_delivery_that_fails_for_good_falls_back_once_and_one_that_is_sent_does_not(tmp_path: Path) -> None:
    stage = runtime(DELIVER_STAGE, tmp_path)
    stage.context.services = {"email": FakeAdapter()}
    fallback = {"channel": "sms", "address": "+15550000001", "content": records.content("sms", html=None)}
    gone = records.delivery_task(notification_id=uuid.UUID(int=1), address="gone@example.com", fallback=fallback)
    fine = records.delivery_task(notification_id=uuid.UUID(int=2), fallback=fallback)
    out = await stage.handle([incoming(gone, "DeliveryTask", deliver_topic("email"), 1),
                              incoming(fine, "DeliveryTask", deliver_topic("email"), 2)])
    [instead] = out.of(DELIVER_BY_NAME[deliver_topic("sms")])
    assert (instead["notification_id"].int, instead["channel"], instead["address"]) == (1, "sms", "+15550000001")
    assert instead["attempt"] == 0 and instead["fallback"] is None  # once: the fallback has none of its own
    routed = [e for e in out.of(EVENTS) if e["status"] == "routed"]
    assert [(e["channel"], e["error_code"]) for e in routed] == [("sms", "fallback")]
    assert "smtp_550" in routed[0]["detail"]


async def test_an_sms_not_reported_delivered_in_time_falls_back_once_and_one_reported_does_not(
    tmp_path: Path
) -> None:
    stage = runtime(DELIVER_STAGE, tmp_path, fallback_after_s={"otp": 30})
    sms = FakeAdapter()
    sms.channel = "sms"
    stage.context.services = {"sms": sms}
    fallback = {"channel": "email", "address": "alice@example.com", "content": records.content()}

    def sms_task(n: int, **overrides: Any) -> dict[str, Any]:
        return records.delivery_task(**{"notification_id": uuid.UUID(int=n), "channel": "sms", "address": "+15550000001",
                                        "content": records.content("sms", html=None), "category": "otp",
                                        "fallback": fallback, **overrides})

    # Sent: a watch goes to the waiting topic, due when the category's wait is over; none without a fallback.
    out = await stage.handle([incoming(sms_task(1), "DeliveryTask", deliver_topic("sms"), 1),
                              incoming(sms_task(2, fallback=None), "DeliveryTask", deliver_topic("sms"), 2)])
    [watch] = out.of(SCHEDULED)
    assert watch["notification_id"].int == 1 and watch["awaiting_receipt"] and watch["channel"] == "sms"
    assert 25 < (watch["due_at"] - datetime.now(UTC)).total_seconds() <= 30

    # Due: reported delivered → nothing; reported failed, or no report → the fallback, once, and why.
    receipts = stage.context.receipts
    assert receipts is not None
    for n, status in ((1, "delivered"), (3, "failed")):
        receipts.fold(b"", {"notification_id": uuid.UUID(int=n), "channel": "sms", "status": status,
                            "received_at": datetime.now(UTC)})
    due = [incoming(sms_task(n, awaiting_receipt=True, due_at=datetime.now(UTC)), "DeliveryTask", deliver_topic("sms"), n)
           for n in (1, 3, 4)]
    out = await stage.handle(due)
    assert sms.sent == ["+15550000001", "+15550000001"]  # the two first sends; a watch sends nothing itself
    instead = out.of(DELIVER_BY_NAME[deliver_topic("email")])
    assert sorted(t["notification_id"].int for t in instead) == [3, 4]
    assert all(t["fallback"] is None and not t["awaiting_receipt"] for t in instead)
    details = {e["notification_id"].int: e["detail"] for e in out.of(EVENTS) if e["error_code"] == "fallback"}
    assert details == {3: "sms reported failed by the provider within 30 s: falling back to email",
                       4: "sms not reported delivered within 30 s: falling back to email"}


async def test_deliver_removes_a_dead_address(tmp_path: Path) -> None:
    stage = runtime(DELIVER_STAGE, tmp_path)
    stage.context.services = {"email": FakeAdapter()}
    value = records.delivery_task(address="dead@example.com")
    out = await stage.handle([incoming(value, "DeliveryTask", deliver_topic("email"), 1)])
    [event] = out.of(EVENTS)
    assert (event["status"], event["error_code"], event["provider"]) == ("failed", "smtp_550_5_1_1", "relay-b")
    [removal] = out.of(CONTACTS_REMOVED)
    assert (removal["user_id"], removal["channel"], removal["address"]) == ("user-1", "email", "dead@example.com")
    assert removal["reason_code"] == "smtp_550_5_1_1" and out.of(DLQ) == []


async def test_deliver_dead_letters_after_the_last_attempt(tmp_path: Path) -> None:
    stage = runtime(DELIVER_STAGE, tmp_path)
    stage.context.services = {"email": FakeAdapter()}
    last = stage.settings.delivery_max_attempts - 1
    value = records.delivery_task(address="busy@example.com", attempt=last)
    out = await stage.handle([incoming(value, "DeliveryTask", deliver_topic("email"), 1)])
    assert [e["status"] for e in out.of(EVENTS)] == ["failed", "dead_lettered"]
    [letter] = out.of(DLQ)
    assert letter["reason_code"] == "retries_exhausted"
    assert SERDE.decode(letter["original_value"], "DeliveryTask") == value


async def test_deliver_requeues_a_due_retry(tmp_path: Path) -> None:
    stage = runtime(DELIVER_STAGE, tmp_path)
    value = records.delivery_task(attempt=1, due_at=records.REQUESTED_AT, priority="high")
    out = await stage.handle([incoming(value, "DeliveryTask", RETRY[0].name, 1)])
    assert out.of(DELIVER_BY_NAME[deliver_topic("email", high=True)]) == [value]


@pytest.mark.parametrize("spec", [spec for spec in STAGES.values() if spec.handle is not None], ids=lambda s: s.name)
async def test_a_batch_that_is_all_poison_is_all_dead_lettered(spec: StageSpec, tmp_path: Path) -> None:
    stage = runtime(spec, tmp_path)
    topic = spec.inputs[0]
    batch = [incoming({"not": "a record"}, topic.schemas[0], topic.name, offset) for offset in range(3)]
    out = await stage.handle(batch)
    assert [d["offset"] for d in out.of(DLQ)] == [0, 1, 2]
    assert len(out) == 3


async def test_a_retry_not_due_goes_back_to_its_retry_topic_instead_of_holding_the_batch(tmp_path: Path) -> None:
    stage = runtime(DELIVER_STAGE, tmp_path)
    stage.settings.retry_hold_s = 0.05
    now = datetime.now(UTC)
    due = records.delivery_task(notification_id=uuid.UUID(int=1), attempt=1, due_at=now)
    later = records.delivery_task(notification_id=uuid.UUID(int=2), attempt=1, due_at=now + timedelta(seconds=60))
    started = time.monotonic()
    out = await stage.handle([incoming(due, "DeliveryTask", RETRY[1].name, 1),
                              incoming(later, "DeliveryTask", RETRY[1].name, 2)])
    assert time.monotonic() - started < 1
    assert notification_ids(out, DELIVER_BY_NAME[deliver_topic("email")]) == [uuid.UUID(int=1)]
    assert notification_ids(out, RETRY[1]) == [uuid.UUID(int=2)]


def test_the_registry_names_stages_without_importing_them() -> None:
    """The supervisor of `herald worker --stage all` needs the names only; a worker imports its own stage."""
    code = ("import sys; from agents.registry import STAGES; names = list(STAGES); "
            "assert not any(m in sys.modules for m in ('agents.deliver', 'agents.ingest', 'twilio')), names; "
            "STAGES['ingest']; assert 'agents.ingest' in sys.modules and 'agents.deliver' not in sys.modules; "
            "print(','.join(names))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ",".join(STAGES)
