"""agents/deliver.py: retry tiers, jittered due times, the delivered-table key; and
streams/stage.py's `lifecycle_event`, which the deliver stage emits for every outcome."""

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from agents import deliver
from agents.channels.base import Outcome, Result
from agents.deliver import delivered_key, due_in_s, retry_delay_s
from streams.stage import lifecycle_event
from streams.codec import default_serde
from streams.topics import RETRY_DELAYS_S
from tests.unit import records

TRANSIENT = Outcome(Result.TRANSIENT, "smtp_450", "mailbox busy")


@pytest.mark.parametrize(("attempt", "delay"), [(0, 5), (1, 30), (2, 300), (3, 300), (10, 300)])
def test_retry_delay_tiers(attempt: int, delay: int) -> None:
    assert retry_delay_s(attempt) == delay


def test_every_retry_delay_is_a_retry_topic() -> None:
    assert {retry_delay_s(a) for a in range(20)} == set(RETRY_DELAYS_S)


@pytest.mark.parametrize("delay", RETRY_DELAYS_S)
def test_due_in_is_jittered_within_20_percent(delay: int) -> None:
    rng_state = random.getstate()
    random.seed(1234)
    try:
        samples = [due_in_s(delay, TRANSIENT) for _ in range(2000)]
    finally:
        random.setstate(rng_state)
    assert all(0.8 * delay <= s <= 1.2 * delay for s in samples)
    assert len(set(samples)) > 1000  # jittered, not constant
    assert min(samples) < 0.85 * delay and max(samples) > 1.15 * delay  # spread over the whole band


@pytest.mark.parametrize(("factor", "expected"), [(0.8, 24.0), (1.2, 36.0)])
def test_due_in_jitter_bounds(monkeypatch: pytest.MonkeyPatch, factor: float, expected: float) -> None:
    monkeypatch.setattr(deliver.random, "uniform", lambda low, high: factor)
    assert due_in_s(30, TRANSIENT) == pytest.approx(expected)


def test_due_in_respects_a_later_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deliver.random, "uniform", lambda low, high: high)
    outcome = Outcome(Result.TRANSIENT, "http_429", "slow down", retry_after_s=120.0)
    assert due_in_s(5, outcome) == 120.0


def test_due_in_ignores_an_earlier_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deliver.random, "uniform", lambda low, high: low)
    outcome = Outcome(Result.TRANSIENT, "http_429", "slow down", retry_after_s=1.0)
    assert due_in_s(30, outcome) == pytest.approx(24.0)


def test_delivered_key_is_per_notification_channel_and_address() -> None:
    task = records.delivery_task()
    assert delivered_key(task).startswith(f"{records.NOTIFICATION_ID}/email/")
    assert delivered_key(records.delivery_task(address="other@example.com")) != delivered_key(task)
    assert delivered_key(records.delivery_task(channel="sms")) != delivered_key(task)
    other = records.delivery_task(notification_id=uuid.UUID(int=1))
    assert delivered_key(other) != delivered_key(task)


def test_delivered_key_ignores_the_attempt() -> None:
    assert delivered_key(records.delivery_task(attempt=3)) == delivered_key(records.delivery_task(attempt=0))


# --- lifecycle_event -------------------------------------------------------------------------------------

AT = records.REQUESTED_AT + timedelta(milliseconds=1500)


def test_lifecycle_event_fields() -> None:
    task = records.delivery_task(priority="high", category="security")
    event = lifecycle_event(task, "retried", "deliver", channel="email", provider="smtp", attempt=2,
                            error_code="smtp_450", detail="busy", at=AT)
    assert event == {
        "event_id": event["event_id"], "notification_id": records.NOTIFICATION_ID, "tenant": "acme",
        "status": "retried", "stage": "deliver", "channel": "email", "provider": "smtp", "template_id": "welcome",
        "category": "security", "priority": "high", "attempt": 2, "error_code": "smtp_450", "detail": "busy",
        "latency_ms": 1500, "occurred_at": AT,
    }
    assert isinstance(event["event_id"], uuid.UUID)


def test_lifecycle_event_id_is_deterministic() -> None:
    notification = records.notification()
    first = lifecycle_event(notification, "accepted", "ingest", at=AT)
    again = lifecycle_event(notification, "accepted", "ingest", at=AT + timedelta(hours=1))
    assert first["event_id"] == again["event_id"]


@pytest.mark.parametrize("change", [
    {"status": "failed"}, {"stage": "route"}, {"channel": "sms"}, {"attempt": 1},
])
def test_lifecycle_event_id_differs_by_what_happened(change: dict) -> None:
    base = {"status": "sent", "stage": "deliver", "channel": "email", "attempt": 0}
    task = records.delivery_task()

    def event_id(status: str, stage: str, channel: str, attempt: int) -> uuid.UUID:
        return lifecycle_event(task, status, stage, channel=channel, attempt=attempt, at=AT)["event_id"]

    assert event_id(**base) != event_id(**(base | change))


def test_lifecycle_event_id_differs_by_notification() -> None:
    one = lifecycle_event(records.notification(), "accepted", "ingest", at=AT)
    other = lifecycle_event(records.notification(notification_id=uuid.UUID(int=7)), "accepted", "ingest", at=AT)
    assert one["event_id"] != other["event_id"]


def test_lifecycle_event_id_without_channel_differs_from_any_channel() -> None:
    task = records.delivery_task()
    ids = {lifecycle_event(task, "routed", "route", channel=c, at=AT)["event_id"] for c in (None, "email", "sms")}
    assert len(ids) == 3


def test_latency_from_requested_at() -> None:
    notification = records.notification()
    event = lifecycle_event(notification, "accepted", "ingest", at=notification["requested_at"] + timedelta(seconds=2))
    assert event["latency_ms"] == 2000


def test_latency_from_received_at_without_requested_at() -> None:
    notification = records.notification(requested_at=None)
    event = lifecycle_event(notification, "accepted", "ingest", at=notification["received_at"] + timedelta(milliseconds=250))
    assert event["latency_ms"] == 250


def test_occurred_at_defaults_to_now() -> None:
    before = datetime.now(UTC)
    event = lifecycle_event(records.notification(), "accepted", "ingest")
    assert before <= event["occurred_at"] <= datetime.now(UTC)
    assert event["latency_ms"] > 0


@pytest.mark.parametrize("source", [records.notification(), records.delivery_task()])
def test_lifecycle_event_encodes(source: dict) -> None:
    serde = default_serde()
    event = lifecycle_event(source, "failed", "deliver", channel="email", provider="smtp", attempt=4,
                            error_code="smtp_550", detail="no such user", at=AT)
    decoded = serde.decode(serde.encode("LifecycleEvent", event), "LifecycleEvent")
    assert decoded == event
