"""`herald replay events` rebuilds ClickHouse from the log without changing what it counts."""

import time
import uuid
from datetime import datetime, timedelta, timezone

from clickhouse_driver import Client
from kafka import KafkaProducer

from streams.settings import Settings
from streams.topics import ACCEPTED
from tests.integration.pipeline_helpers import (Mail, events_with, new_tenant, produce, put_template, request,
                                                wait_for_statuses)
from tooling.replay import replay_events, replay_refused

COUNTS = ("SELECT status, count() FROM notification_events FINAL WHERE tenant = %(tenant)s "
          "GROUP BY status ORDER BY status")
# The dashboard's rollup (migration 0003), which counts rows as they are inserted.
ROLLUP_COUNTS = ("SELECT status, sum(events) FROM events_per_minute WHERE tenant = %(tenant)s "
                 "GROUP BY status ORDER BY status")


def test_replaying_the_events_leaves_the_counts_as_they_were(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    put_template("replay-check", [], "Hi", "Hello")
    time.sleep(2)  # validate and template fold herald.templates
    tenant = new_tenant()
    ids = produce(producer, [request(tenant, f"replay-{i}", "replay-check", f"r{i}", f"r{i}@example.com", {})
                             for i in range(50)])
    wait_for_statuses(clickhouse, tenant, ids, {"accepted", "rendered", "routed", "sent"}, 90)
    before = clickhouse.execute(COUNTS, {"tenant": tenant})
    assert dict(before) == {"accepted": 50, "rendered": 50, "routed": 50, "sent": 50}
    assert clickhouse.execute(ROLLUP_COUNTS, {"tenant": tenant}) == before
    done = replay_events(pipeline, since, lambda line: None)
    assert done.rows >= 200 and done.refused == 0 and done.unconvertible == 0
    assert clickhouse.execute(COUNTS, {"tenant": tenant}) == before
    assert done.rollup_days and clickhouse.execute(ROLLUP_COUNTS, {"tenant": tenant}) == before


def test_after_a_template_fix_the_rejected_notifications_are_sent_back_once(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant, template = new_tenant(), f"late-{uuid.uuid4().hex[:8]}"
    ids = produce(producer, [request(tenant, f"late-{i}", template, f"l{i}", f"l{i}@example.com", {})
                             for i in range(5)])
    wait_for_statuses(clickhouse, tenant, ids, {"rejected"}, 60)
    assert {code for code, _ in events_with(clickhouse, tenant, "rejected").values()} == {"unknown_template"}
    put_template(template, [], "Hi", "Hello")  # the fix
    time.sleep(2)
    assert replay_refused(pipeline, "unknown_template", "validate", lambda line: None)[ACCEPTED.name] >= 5
    assert replay_refused(pipeline, "unknown_template", "validate", lambda line: None)[ACCEPTED.name] == 0  # once
    received = Mail(pipeline, ids).wait_for_all(timeout=60)
    assert set(received) == set(ids) and set(received.values()) == {1}
