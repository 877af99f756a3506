"""Quiet hours and frequency caps through the whole pipeline (Kafka, ClickHouse, the SMTP mailbox).

The clock: the unit tests (tests/unit/test_quiet_hours.py) hold 22:00-07:00 in Asia/Tokyo on a
clock they set. Here the pipeline runs on the real clock, so the test sets the window instead: it
puts the user's quiet hours around the real time in Tokyo, ending a minute or two from now, so the
real route finds the user inside them, and the deferred notification is really sent at the end.
"""

import itertools
import os
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from clickhouse_driver import Client
from kafka import KafkaProducer

from streams.settings import Settings
from tooling.bench import herald_processes
from tests.integration.pipeline_helpers import (
    Mail, events_with, new_tenant, produce, put_template, request, set_preferences, statuses, wait_for_statuses,
)
from tooling.local import mailbox_dir
from tooling.mailbox import read_receipts

RUN = uuid.uuid4().hex[:8]
HELLO = f"hello-{RUN}"
CAPPED = f"capped-{RUN}"
SPACED = f"spaced-{RUN}"
TOKYO = ZoneInfo("Asia/Tokyo")


@pytest.fixture(scope="module", autouse=True)
def templates(pipeline: Settings) -> None:
    put_template(HELLO, ["name"], "Hello {{ name }}", "Hello {{ name }}.")
    put_template(CAPPED, ["name"], "News for {{ name }}", "News, {{ name }}.", category="marketing",
                 frequency_caps=[{"channel": "*", "limit": 3, "period_s": 3600}], over_cap="suppress")
    put_template(SPACED, ["name"], "Update for {{ name }}", "Update, {{ name }}.",
                 frequency_caps=[{"channel": "email", "limit": 1, "period_s": 20}], over_cap="defer")
    time.sleep(3)  # the stages fold herald.templates as they arrive


def first_arrival_ms(pipeline: Settings, notification_id: str) -> float | None:
    return next((r.received_ms for r in read_receipts(mailbox_dir(pipeline))
                 if r.notification_id == notification_id and not r.duplicate), None)


def first_held(producer: KafkaProducer, clickhouse: Client, tenant: str, user: str, timeout: float) -> str:
    """Notifications to the user, one at a time, until route holds one: route has folded the user's
    new preferences by then (those it routed before are the test's to ignore). The held one's id."""
    deadline = time.monotonic() + timeout
    for i in itertools.count():
        [nid] = produce(producer, [request(tenant, f"quiet-{i}", HELLO, user, None, {"name": "Sleeper"})])
        found: set[str] = set()
        while not found & {"routed", "deferred"} and time.monotonic() < deadline:
            time.sleep(0.5)
            found = statuses(clickhouse, tenant).get(nid, set())
        if "deferred" in found:
            return nid
        assert time.monotonic() < deadline, f"route never held a notification for {user}: {found}"


def test_inside_quiet_hours_in_tokyo_one_waits_for_the_window_end_and_a_high_priority_one_goes_now(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant, user = new_tenant(), f"sleeper-{RUN}"
    now = datetime.now(TOKYO)
    # The window ends on a whole minute 90 to 150 s from now, which leaves time to see the high one sent first.
    end = (now + timedelta(seconds=150)).replace(second=0, microsecond=0)
    start = now - timedelta(hours=1)
    set_preferences(tenant, user, f"{user}@example.com", time_zone="Asia/Tokyo",
                    quiet_hours={"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"})
    held = first_held(producer, clickhouse, tenant, user, timeout=60)
    urgent = request(tenant, "urgent", HELLO, user, None, {"name": "Sleeper"}) | {"priority": "high"}
    [now_id] = produce(producer, [urgent])

    found = wait_for_statuses(clickhouse, tenant, [now_id], {"sent"}, 60)
    assert "sent" in found[now_id] and "deferred" not in found[now_id], found[now_id]
    assert first_arrival_ms(pipeline, now_id) < end.timestamp() * 1000  # sent inside the quiet hours
    code, detail = events_with(clickhouse, tenant, "deferred")[held]
    assert f"until {end.isoformat()}" in detail and "Asia/Tokyo" in detail, detail
    assert first_arrival_ms(pipeline, held) is None  # still waiting

    received = Mail(pipeline, [held]).wait_for_all(timeout=(end - datetime.now(TOKYO)).total_seconds() + 60)
    assert received[held] == 1
    late_s = first_arrival_ms(pipeline, held) / 1000 - end.timestamp()
    assert 0 <= late_s <= 5, f"sent {late_s:.1f} s after the window's end"


def sent_or_suppressed(clickhouse: Client, tenant: str, ids: list[str], timeout: float) -> dict[str, set[str]]:
    deadline = time.monotonic() + timeout
    found = statuses(clickhouse, tenant)
    while time.monotonic() < deadline and not all(found.get(i, set()) & {"sent", "suppressed"} for i in ids):
        time.sleep(1)
        found = statuses(clickhouse, tenant)
    return found


def test_a_cap_of_3_an_hour_suppresses_the_fourth_in_the_hour_and_route_killed_still_counts_them(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant, user = new_tenant(), f"reader-{RUN}"

    def news(i: int) -> dict:
        return request(tenant, f"news-{i}", CAPPED, user, f"{user}@example.com", {"name": "Reader"}) | {"category": "marketing"}

    other = request(tenant, "other", HELLO, user, f"{user}@example.com", {"name": "Reader"}) | {"category": "marketing"}
    ids = produce(producer, [news(i) for i in range(4)] + [other])  # `other`'s template has no caps: it goes
    found = sent_or_suppressed(clickhouse, tenant, ids, 90)
    sent = [i for i in ids[:4] if "sent" in found.get(i, set())]
    suppressed = events_with(clickhouse, tenant, "suppressed")
    assert len(sent) == 3 and len(suppressed) == 1, found
    [(fourth, (code, detail))] = suppressed.items()
    assert fourth in ids[:4] and code == "frequency_cap" and "3 per 3600 s of 'marketing' on email" in detail
    assert "sent" in found[ids[4]]

    # The counts are route's per-user state: a route worker killed and started again reads them back.
    [route_pid] = [pid for pid, role in herald_processes(pipeline).items() if role == "route"]
    os.kill(route_pid, signal.SIGKILL)  # the supervisor starts it again
    [fifth] = produce(producer, [news(4)])
    found = sent_or_suppressed(clickhouse, tenant, [fifth], 120)
    assert "suppressed" in found[fifth] and "sent" not in found[fifth], found[fifth]
    assert events_with(clickhouse, tenant, "suppressed")[fifth][0] == "frequency_cap"
    time.sleep(3)
    assert not {fourth, fifth} & set(Mail(pipeline, ids + [fifth]).submissions())


def test_over_a_cap_with_over_cap_defer_one_waits_until_the_cap_allows_it(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant, user = new_tenant(), f"spaced-{RUN}"
    ids = produce(producer, [request(tenant, f"update-{i}", SPACED, user, f"{user}@example.com", {"name": "S"})
                             for i in range(2)])
    received = Mail(pipeline, ids).wait_for_all(timeout=120)
    assert set(received.values()) == {1}
    [(later, (_, detail))] = events_with(clickhouse, tenant, "deferred").items()
    assert "frequency cap reached (1 per 20 s of 'transactional' on email): until" in detail
    # Due 20 s after route let the first through; the detail gives that time to the second.
    due = datetime.strptime(detail.rsplit("until ", 1)[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    late_s = first_arrival_ms(pipeline, later) / 1000 - due.timestamp()
    assert 0 <= late_s <= 6, f"the deferred one came {late_s:.1f} s after {due}"
    first = next(i for i in ids if i != later)
    assert first_arrival_ms(pipeline, first) / 1000 < due.timestamp() - 15
