"""Digests on the real broker, ClickHouse and SMTP server: a template with a 10 s digest window turns a
user's notifications into one email listing them all, once, even with every worker SIGKILLed while
the window is open."""

import os
import signal
import time
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from clickhouse_driver import Client
from kafka import KafkaProducer

from agents.registry import STAGES
from schemas.models import TemplateUpserted
from streams.settings import Settings
from streams.tables import template_key
from streams.topics import TEMPLATES
from tests.integration.pipeline_helpers import (Mail, events_with, new_tenant, produce, request, statuses,
                                                 tenant_key, wait_for_statuses)
from tests.integration.test_pipeline import stage_pids
from tooling.producer import publish

RUN = uuid.uuid4().hex[:8]
COMMENTS = f"comments-{RUN}"
WINDOW_S = 10


@pytest.fixture(scope="module", autouse=True)
def digest_template(pipeline: Settings) -> None:
    template = TemplateUpserted.model_validate({
        "template_id": COMMENTS, "version": 1, "locale": "en", "variables": ["author", "comment"],
        "parts": [{"channel": "email", "subject": "{{ count }} new comments",
                   "text": "{% for item in items %}{{ item.author }}: {{ item.comment }}\n{% endfor %}"}],
        "digest": {"key": None, "window_s": WINDOW_S, "max_items": 100},
        "updated_at": datetime.now(timezone.utc),
    })
    publish(TEMPLATES, [(template_key(template.tenant, COMMENTS, "en", 1), template)])
    time.sleep(3)  # the stages fold herald.templates as it arrives


def comments(tenant: str, user_id: str, n: int) -> list[dict]:
    return [request(tenant, f"{user_id}-{i}", COMMENTS, user_id, f"{user_id}@example.com",
                    {"author": f"author {i}", "comment": f"comment {i} for {user_id}"}) for i in range(n)]


def digest_of(clickhouse: Client, tenant: str, ids: list[str], timeout: float) -> dict[str, str]:
    """Each notification's digest id, from its `digested` event, once every one of `ids` has one."""
    deadline = time.monotonic() + timeout
    while True:
        found = {nid: detail.removeprefix("digest ") for nid, (_, detail) in events_with(clickhouse, tenant, "digested").items()}
        if set(ids) <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def sent(clickhouse: Client, tenant: str) -> set[str]:
    """The tenant's notifications that reached a provider."""
    return {nid for nid, reached in statuses(clickhouse, tenant).items() if "sent" in reached}


def test_25_notifications_become_one_email_listing_25_items_and_two_users_get_one_digest_each(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant = new_tenant()
    started = time.time()
    alice = produce(producer, comments(tenant, "alice", 25))
    bob = produce(producer, comments(tenant, "bob", 3))
    digests = digest_of(clickhouse, tenant, alice + bob, timeout=60)
    assert {digests.get(nid) for nid in alice} == {digests[alice[0]]}, "alice's notifications in several digests"
    assert {digests.get(nid) for nid in bob} == {digests[bob[0]]}, "bob's notifications in several digests"
    alice_digest, bob_digest = digests[alice[0]], digests[bob[0]]

    mail = Mail(pipeline, [alice_digest, bob_digest])
    received = mail.wait_for_all(timeout=90)
    assert received == {alice_digest: 1, bob_digest: 1}
    assert time.time() - started >= WINDOW_S, "a digest went out before its window closed"
    message = mail.message(alice_digest, pipeline.email_domain)
    assert message["Subject"] == "25 new comments" and message["To"] == "alice@example.com"
    # In the order they were gathered: the accepted and validated topics are not ordered by user.
    lines = message.get_body(("plain",)).get_content().strip().splitlines()
    assert sorted(lines) == sorted(f"author {i}: comment {i} for alice" for i in range(25))
    assert mail.message(bob_digest, pipeline.email_domain)["Subject"] == "3 new comments"
    assert not Mail(pipeline, alice + bob).submissions(), "a gathered notification was also sent alone"

    time.sleep(3)  # a second digest would have come by now
    assert sent(clickhouse, tenant) == {alice_digest, bob_digest}
    assert Mail(pipeline, [alice_digest, bob_digest]).stored(pipeline.email_domain) == 2


def test_a_sigkill_of_every_worker_mid_window_neither_loses_nor_doubles_the_digest(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    """All 25 are in the open window when every worker dies (a notification that reached the digest
    stage only after its window closed would rightly open a second one). Upstream stages read their
    uncommitted input again and send some of the 25 again; the restarted digest worker reads the
    window back and sends it once, when its time is up."""
    tenant = new_tenant()
    ids = produce(producer, comments(tenant, "carol", 25))
    gathered = digest_of(clickhouse, tenant, ids, timeout=60)
    assert set(gathered) >= set(ids), f"{len(set(ids) - set(gathered))} of 25 not gathered in 60 s"
    digest = gathered[ids[0]]
    assert set(gathered.values()) == {digest}
    killed = stage_pids(pipeline, tuple(STAGES))
    assert len(killed) == len(STAGES)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)  # the supervisor starts them again
    assert digest not in statuses(clickhouse, tenant), "the digest went out before the kill: not a kill mid-window"

    mail = Mail(pipeline, [digest])
    assert mail.wait_for_all(timeout=180) == {digest: 1}
    lines = mail.message(digest, pipeline.email_domain).get_body(("plain",)).get_content().strip().splitlines()
    assert sorted(lines) == sorted(f"author {i}: comment {i} for carol" for i in range(25))

    time.sleep(WINDOW_S)  # a second window, opened by a notification read again, would have closed by now
    assert sent(clickhouse, tenant) == {digest}
    assert mail.stored(pipeline.email_domain) == 1
    assert set(digest_of(clickhouse, tenant, ids, timeout=0).values()) == {digest}


def test_workers_killed_with_notifications_in_flight_put_each_in_one_digest_sent_once(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    """Killed as soon as the first is gathered: the rest reach the digest stage after the restarts,
    inside the window or (restarts slower than the window) in a second digest. Either way each
    notification is in one digest, and each digest goes out once."""
    tenant = new_tenant()
    ids = produce(producer, comments(tenant, "dave", 25))
    deadline = time.monotonic() + 60
    while not events_with(clickhouse, tenant, "digested") and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in stage_pids(pipeline, tuple(STAGES)):
        os.kill(pid, signal.SIGKILL)
    gathered = digest_of(clickhouse, tenant, ids, timeout=180)
    assert set(gathered) >= set(ids), f"{len(set(ids) - set(gathered))} of 25 never gathered after the kill"
    digests = sorted(set(gathered.values()))
    mail = Mail(pipeline, digests)
    assert mail.wait_for_all(timeout=180) == {digest: 1 for digest in digests}
    lines = [line for digest in digests
             for line in mail.message(digest, pipeline.email_domain).get_body(("plain",)).get_content().strip().splitlines()]
    assert sorted(lines) == sorted(f"author {i}: comment {i} for dave" for i in range(25)), "lost or listed twice"
    time.sleep(WINDOW_S)
    assert sent(clickhouse, tenant) == set(digests)
    assert mail.stored(pipeline.email_domain) == len(digests)


def test_a_notification_cancelled_while_its_window_is_open_is_left_out_of_the_digest(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant = new_tenant()
    key = tenant_key(pipeline, tenant)  # a cancellation is in the name of its key's tenant
    ids = produce(producer, comments(tenant, "erin", 5))
    response = httpx.delete(f"http://{pipeline.gateway_host}:{pipeline.gateway_port}/v1/notifications/{ids[2]}",
                            headers={"X-API-Key": key}, timeout=10)
    assert response.status_code == 202
    digest = digest_of(clickhouse, tenant, ids[:1], timeout=60)[ids[0]]
    mail = Mail(pipeline, [digest])
    assert mail.wait_for_all(timeout=90) == {digest: 1}
    lines = mail.message(digest, pipeline.email_domain).get_body(("plain",)).get_content().strip().splitlines()
    assert sorted(lines) == sorted(f"author {i}: comment {i} for erin" for i in (0, 1, 3, 4))
    wait_for_statuses(clickhouse, tenant, [ids[2]], {"suppressed"}, timeout=60)
    assert events_with(clickhouse, tenant, "suppressed")[ids[2]][0] == "cancelled"
