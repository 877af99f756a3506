"""Every channel through the whole pipeline to its local peer (tooling/peers), with the real client
libraries: SMS (Twilio REST), push (APNs over HTTP/2+TLS, FCM v1, web push), chat (Slack webhooks),
the in-app inbox (herald.inbox and the gateway's API), plus what providers tell Herald back."""

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from clickhouse_driver import Client
from kafka import KafkaProducer

from gateway.inbox import mint_token
from schemas.models import PreferencesUpdated, TemplateUpserted
from streams.settings import Settings
from streams.tables import preference_key, template_key
from streams.topics import PREFERENCES, TEMPLATES
from tests.stack import environment
from tests.integration.pipeline_helpers import (Mail, events_with, new_tenant, produce, request, tenant_key,
                                                wait_for_statuses)
from tooling.bench import herald_processes
from tooling.local import start_herald, stop_process
from tooling.peers.server import peer_dir, read_receipts
from tooling.producer import publish

RUN = uuid.uuid4().hex[:8]
TEMPLATE = f"every-channel-{RUN}"
# Each channel's provider peers, by the token kind or hook that picks them.
PEERS = {"sms": ("twilio",), "push": ("apns", "fcm", "webpush"), "chat": ("slack",)}
PUSH_KINDS = ("apns", "fcm", "webpush")


@pytest.fixture(scope="module", autouse=True)
def template(pipeline: Settings) -> None:
    parts = [
        {"channel": "email", "subject": "Hi {{ name }}", "text": "Hello {{ name }}",
         "html": '<p>Hello {{ name }}, <a href="https://example.com/orders/{{ name }}">your order</a></p>'},
        {"channel": "sms", "text": "Hello {{ name }} by SMS"},
        {"channel": "push", "subject": "Hi {{ name }}", "text": "Hello {{ name }} by push"},
        {"channel": "chat", "subject": "Hi {{ name }}", "text": "Hello {{ name }} in chat"},
        {"channel": "in_app", "subject": "Hi {{ name }}", "text": "Hello {{ name }} in the app"},
    ]
    publish(TEMPLATES, [(template_key("default", TEMPLATE, "en", 1), TemplateUpserted.model_validate({
        "template_id": TEMPLATE, "version": 1, "locale": "en", "variables": ["name"], "parts": parts,
        "updated_at": datetime.now(timezone.utc)}))])
    time.sleep(3)  # the stages fold herald.templates


@pytest.fixture(autouse=True)
def healthy_peers(pipeline: Settings) -> Iterator[None]:
    yield
    for provider in ("twilio", "apns", "fcm", "webpush", "slack", "webhook"):
        httpx.delete(f"{peers_url(pipeline)}/_faults/{provider}", timeout=5)


def peers_url(settings: Settings) -> str:
    return f"http://{settings.peers_host}:{settings.peers_port}"


def gateway_url(settings: Settings) -> str:
    return f"http://{settings.gateway_host}:{settings.gateway_port}"


def fault(settings: Settings, provider: str, **spec: Any) -> None:
    httpx.post(f"{peers_url(settings)}/_faults/{provider}", json=spec, timeout=5).raise_for_status()


def push_token(settings: Settings, kind: str, user: str) -> str:
    if kind == "apns":
        return "apns:" + uuid.uuid5(uuid.NAMESPACE_URL, user).hex * 2
    if kind == "fcm":
        return f"fcm:{uuid.uuid5(uuid.NAMESPACE_URL, user).hex}-{RUN}"
    subscription = httpx.get(f"{peers_url(settings)}/push/_subscribe", params={"id": user}, timeout=5)
    return subscription.json()["token"]


def phone(i: int) -> str:
    return f"+3361{RUN_DIGITS}{i:04d}"


RUN_DIGITS = f"{int(RUN, 16) % 1000:03d}"


def set_contacts(settings: Settings, tenant: str, user: str, i: int, kind: str, slack: bool = True) -> None:
    """The user's phone, one push token (of `kind`) and a chat webhook (Slack's, or a signed generic one), in preferences."""
    publish(PREFERENCES, [(preference_key(tenant, user), contacts(settings, tenant, user, i, kind, slack))])


def contacts(settings: Settings, tenant: str, user: str, i: int, kind: str, slack: bool = True) -> PreferencesUpdated:
    hook = f"/services/T{RUN.upper()}/B{i:06d}/hook" if slack else f"/webhooks/{user}"
    return PreferencesUpdated.model_validate({
        "user_id": user, "tenant": tenant, "phone": phone(i), "push_tokens": [push_token(settings, kind, user)],
        "chat_webhook": f"{peers_url(settings)}{hook}",
        "updated_at": datetime.now(timezone.utc)})


def send(producer: KafkaProducer, tenant: str, users: list[str], channels: list[str], prefix: str) -> list[str]:
    requests = []
    for i, user in enumerate(users):
        r = request(tenant, f"{prefix}-{i}", TEMPLATE, user, f"{user}@example.com", {"name": f"N{i}"})
        r["channels"] = channels
        requests.append(r)
    return produce(producer, requests)


def receipts(settings: Settings, providers: tuple[str, ...], ids: set[str]) -> list[dict[str, Any]]:
    return [dict(r, provider=p) for p in providers for r in read_receipts(peer_dir(settings, p))
            if r.get("notification_id") in ids]


def stored(settings: Settings, providers: tuple[str, ...], ids: set[str]) -> Counter[str]:
    """Per notification: what the providers kept (a repeat they recognised by its idempotency key is not kept)."""
    return Counter(r["notification_id"] for r in receipts(settings, providers, ids) if not r["duplicate"])


def wait_stored(settings: Settings, providers: tuple[str, ...], ids: set[str], timeout: float) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while len(found := stored(settings, providers, ids)) < len(ids) and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(1)  # late repeats
    return stored(settings, providers, ids)


KEYS: dict[str, str] = {}  # tenant → its API key: a service reads only its own tenant's inboxes


def inbox(settings: Settings, tenant: str, user: str, token: str | None = None) -> httpx.Response:
    if token is None and tenant not in KEYS:
        KEYS[tenant] = tenant_key(settings, tenant)
    headers = {"Authorization": f"Bearer {token}"} if token else {"X-API-Key": KEYS[tenant]}
    return httpx.get(f"{gateway_url(settings)}/v1/users/{user}/inbox", params={"tenant": tenant},
                     headers=headers, timeout=10)


def wait_inbox(settings: Settings, tenant: str, user: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        response = inbox(settings, tenant, user)
        messages = response.json()["messages"] if response.status_code == 200 else []
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def test_every_channel_delivers_each_notification_once_with_its_content(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant, n = new_tenant(), 500
    users = [f"u{i}-{RUN}" for i in range(n)]
    publish(PREFERENCES, [(preference_key(tenant, user), contacts(pipeline, tenant, user, i, PUSH_KINDS[i % 3]))
                          for i, user in enumerate(users)])
    time.sleep(3)  # route and validate fold the preferences
    ids = send(producer, tenant, users, [], "all")  # no channels asked: every part of the template
    id_set = set(ids)
    by_name = dict(zip(ids, range(n)))

    for channel, providers in PEERS.items():
        got = wait_stored(pipeline, providers, id_set, 120)
        assert len(got) == n and set(got.values()) == {1}, f"{channel}: {len(got)} of {n}, repeats {got.most_common(3)}"
    texts = {r["notification_id"]: r for r in receipts(pipeline, ("twilio",), id_set)}
    assert all(texts[i]["body"] == f"Hello N{by_name[i]} by SMS" and texts[i]["to"] == phone(by_name[i]) for i in ids)
    for r in receipts(pipeline, ("apns", "fcm", "webpush"), id_set):
        name = f"N{by_name[r['notification_id']]}"
        title, body = {"apns": lambda: (r["payload"]["aps"]["alert"]["title"], r["payload"]["aps"]["alert"]["body"]),
                       "fcm": lambda: (r["notification"]["title"], r["notification"]["body"]),
                       "webpush": lambda: (r["payload"]["title"], r["payload"]["body"])}[r["provider"]]()
        assert (title, body) == (f"Hi {name}", f"Hello {name} by push"), r["provider"]
    assert Counter(r["provider"] for r in receipts(pipeline, ("apns", "fcm", "webpush"), id_set)) == \
        {"apns": 167, "fcm": 167, "webpush": 166}
    assert all(r["text"] == f"Hello N{by_name[r['notification_id']]} in chat" for r in receipts(pipeline, ("slack",), id_set))
    assert Mail(pipeline, ids).wait_for_all(60).keys() == id_set
    for i in (0, n // 2, n - 1):  # the inbox, read through the gateway
        [message] = wait_inbox(pipeline, tenant, users[i], 1)
        assert (message["notification_id"], message["text"]) == (ids[i], f"Hello N{i} in the app")
    found = wait_for_statuses(clickhouse, tenant, ids, {"sent"}, 60)
    assert all("sent" in found.get(i, set()) for i in ids)


@pytest.mark.parametrize(("provider", "channel", "status", "code"), [
    ("twilio", "sms", 401, "twilio_20003"),  # Twilio's 400 is 21211, a dead number (the next test's case)
    ("apns", "push", 400, "apns_BadExpirationDate"),
    ("fcm", "push", 400, "fcm_INVALID_ARGUMENT"),
    ("webpush", "push", 413, "webpush_413"),
    ("slack", "chat", 400, "slack_invalid_payload"),
])
def test_a_permanent_failure_ends_failed_with_the_providers_code(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client, provider: str, channel: str, status: int, code: str
) -> None:
    tenant, user = new_tenant(), f"perm-{provider}-{RUN}"
    set_contacts(pipeline, tenant, user, 9000, provider if provider in PUSH_KINDS else "fcm")
    time.sleep(2)
    fault(pipeline, provider, status=status)
    [nid] = send(producer, tenant, [user], [channel], f"perm-{provider}")
    wait_for_statuses(clickhouse, tenant, [nid], {"failed"}, 60)
    failed = events_with(clickhouse, tenant, "failed")
    assert nid in failed, f"no failed event for {provider}"
    assert failed[nid][0].split(":")[0] in (code, f"{provider}_{status}", f"http_{status}"), failed[nid]
    assert "dead_lettered" not in wait_for_statuses(clickhouse, tenant, [nid], set(), 0)[nid]


def test_transient_failures_and_429_with_retry_after_are_retried_and_delivered_after_the_wait(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant, user, retry_after = new_tenant(), f"transient-{RUN}", 8
    preferences = contacts(pipeline, tenant, user, 9100, "apns")
    preferences.push_tokens = [push_token(pipeline, kind, user) for kind in PUSH_KINDS]  # one device of each kind
    publish(PREFERENCES, [(preference_key(tenant, user), preferences)])
    time.sleep(2)
    fault(pipeline, "twilio", status=503, count=1)  # a plain transient failure
    for provider in ("apns", "fcm", "webpush", "slack"):  # each answers its one request 429, Retry-After 8 s
        fault(pipeline, provider, status=429, count=1, retry_after_s=retry_after)
    sent_at = time.time() * 1000
    [nid] = send(producer, tenant, [user], ["sms", "push", "chat"], "transient")
    providers = ("twilio", "apns", "fcm", "webpush", "slack")
    deadline = time.monotonic() + 90
    while len(got := receipts(pipeline, providers, {nid})) < len(providers) and time.monotonic() < deadline:
        time.sleep(1)
    assert sorted(r["provider"] for r in got if not r["duplicate"]) == sorted(providers)
    waited = {r["provider"]: (r["received_ms"] - sent_at) / 1000 for r in got}
    assert all(waited[p] >= retry_after for p in ("apns", "fcm", "webpush", "slack")), waited
    retried = wait_for_statuses(clickhouse, tenant, [nid], {"retried", "sent"}, 30)
    assert {"retried", "sent"} <= retried[nid]


def test_a_dead_token_is_removed_and_the_next_notification_skips_it(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant, user = new_tenant(), f"dead-{RUN}"
    set_contacts(pipeline, tenant, user, 9200, "apns")
    time.sleep(2)
    token = push_token(pipeline, "apns", user).removeprefix("apns:")
    fault(pipeline, "apns", dead=[token])
    [first] = send(producer, tenant, [user], ["push"], "dead-1")
    wait_for_statuses(clickhouse, tenant, [first], {"failed"}, 60)
    assert events_with(clickhouse, tenant, "failed")[first][0] == "apns_Unregistered"
    time.sleep(2)  # route folds herald.contacts.removed
    [second] = send(producer, tenant, [user], ["push"], "dead-2")
    wait_for_statuses(clickhouse, tenant, [second], {"suppressed"}, 60)
    assert events_with(clickhouse, tenant, "suppressed")[second][0] == "dead_address"
    assert not receipts(pipeline, ("apns",), {first, second})


def test_the_inbox_streams_a_delivered_message_within_a_second_and_keeps_read_across_a_restart(
    pipeline: Settings, producer: KafkaProducer
) -> None:
    tenant, alice, bob = new_tenant(), f"alice-{RUN}", f"bob-{RUN}"
    token = mint_token(pipeline.inbox.token_secret.get_secret_value(), tenant, alice, 600)
    events: list[tuple[float, dict[str, Any]]] = []
    opened = threading.Event()

    def listen() -> None:
        url = f"{gateway_url(pipeline)}/v1/users/{alice}/inbox/stream"
        with httpx.stream("GET", url, params={"token": token}, timeout=httpx.Timeout(30, read=30)) as stream:
            opened.set()
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    events.append((time.time(), json.loads(line.removeprefix("data:"))))
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(10)
    [nid] = send(producer, tenant, [alice], ["in_app"], "inbox")
    listener.join(60)
    assert events, "no message on the stream"
    delivered_at = sent_event_ms(pipeline, nid)
    assert events[0][1]["message"]["notification_id"] == nid
    assert events[0][0] * 1000 - delivered_at < 1000, "on the stream more than 1 s after delivery"

    # A user sees only their own inbox.
    assert inbox(pipeline, tenant, bob, token).status_code in (403, 404)
    assert inbox(pipeline, tenant, alice, token).status_code == 200
    read = httpx.post(f"{gateway_url(pipeline)}/v1/users/{alice}/inbox/{nid}/read",
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert read.status_code in (200, 202)
    time.sleep(1)
    stop_process(pipeline, "gateway")
    start_herald(pipeline, lambda line: None)
    [message] = wait_inbox(pipeline, tenant, alice, 1)
    assert message["read"] and message["seen"]
    assert inbox(pipeline, tenant, alice).json()["unread"] == 0


def sent_event_ms(settings: Settings, nid: str) -> float:
    """When deliver had the message in herald.inbox, from its `sent` event in ClickHouse."""
    from sinks.clickhouse_client import connect

    client = connect(settings)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = client.execute("SELECT max(event_time_ms) FROM notification_events FINAL WHERE notification_id = %(n)s "
                              "AND status = 'sent' AND channel = 'in_app'", {"n": nid})
        if rows and rows[0][0]:
            return float(rows[0][0])
        time.sleep(0.5)
    raise AssertionError(f"no sent event for {nid}")


def test_an_open_and_a_click_reach_the_timeline_and_a_forged_click_is_refused(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant, user = new_tenant(), f"reader-{RUN}"
    [nid] = send(producer, tenant, [user], ["email"], "track")
    mail = Mail(pipeline, [nid])
    mail.wait_for_all(60)
    html = mail.message(nid, pipeline.email_domain).get_body(("html",)).get_content()
    click = html.split('href="', 1)[1].split('"', 1)[0]
    pixel = html.split('<img src="', 1)[1].split('"', 1)[0]
    assert httpx.get(pixel, timeout=10).status_code == 200
    followed = httpx.get(click, timeout=10, follow_redirects=False)
    assert followed.status_code == 302 and followed.headers["Location"] == "https://example.com/orders/N0"
    token = click.rsplit("/", 1)[1]
    forged = httpx.get(click.replace(token, token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")),
                       timeout=10, follow_redirects=False)
    assert forged.status_code == 400 and "Location" not in forged.headers
    found = wait_for_statuses(clickhouse, tenant, [nid], {"sent", "opened", "clicked"}, 60)
    assert {"opened", "clicked"} <= found[nid]


def test_deliver_killed_during_a_mixed_run_loses_nothing_and_sends_nothing_twice(
    pipeline: Settings, producer: KafkaProducer
) -> None:
    tenant, n = new_tenant(), 2000
    users = [f"k{i}-{RUN}" for i in range(n // 4)]
    # Generic webhooks: Slack's have no idempotency key, so a resend after the kill would post twice
    # (agents/channels/chat.py); this checks what Herald guarantees where the provider can.
    publish(PREFERENCES, [(preference_key(tenant, user), contacts(pipeline, tenant, user, 5000 + i, "fcm", slack=False))
                          for i, user in enumerate(users)])
    time.sleep(3)
    channels = ["email", "sms", "push", "chat"]
    batches = [send(producer, tenant, users, [channel], f"kill-{channel}") for channel in channels]
    time.sleep(1.5)
    for pid, role in herald_processes(pipeline).items():
        if role == "deliver":
            os.kill(pid, signal.SIGKILL)
    ids_by_channel = dict(zip(channels, batches))
    assert Mail(pipeline, ids_by_channel["email"]).wait_for_all(180).keys() == set(ids_by_channel["email"])
    stored_mail, _ = Mail(pipeline, ids_by_channel["email"]).tally()
    assert set(stored_mail.values()) == {1}
    for channel, providers in (("sms", ("twilio",)), ("push", ("fcm",)), ("chat", ("webhook",))):
        id_set = set(ids_by_channel[channel])
        got = wait_stored(pipeline, providers, id_set, 180)
        assert len(got) == len(id_set), f"{channel}: {len(id_set) - len(got)} lost"
        assert set(got.values()) == {1}, f"{channel}: stored twice: {got.most_common(3)}"


# A second Twilio account on the same peer, for the breaker: the primary's calls fail, the secondary's work.
SECONDARY = {"HERALD_SMS__SECONDARY__ACCOUNT_SID": "AC" + "0" * 31 + "2",
             "HERALD_SMS__SECONDARY__AUTH_TOKEN": "dev-twilio-token-2", "HERALD_SMS__BREAKER_COOLDOWN_S": "60"}


def restart_with(settings: Settings, variables: dict[str, str | None]) -> None:
    """The workers and the peers started again with these environment variables (the peers must know
    the secondary account's credentials, deliver must use them)."""
    with environment(variables):
        for name in ("workers", "peers"):
            stop_process(settings, name)
        start_herald(settings, lambda line: None)


@pytest.fixture
def secondary_sms(pipeline: Settings) -> Iterator[None]:
    # The secondary account talks to the same peers as the primary (a private stack's port, not 4010).
    variables = {**SECONDARY, "HERALD_SMS__SECONDARY__BASE_URL": pipeline.sms.twilio.base_url}
    restart_with(pipeline, variables)
    yield
    restart_with(pipeline, dict.fromkeys(variables))


def test_with_the_primary_sms_provider_failing_every_call_the_secondary_delivers_each_once(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client, secondary_sms: None
) -> None:
    tenant, n = new_tenant(), 50
    fault(pipeline, "twilio", status=503, scope=pipeline.sms.twilio.account_sid)
    requests = []
    for i in range(n):
        r = request(tenant, f"failover-{i}", TEMPLATE, f"f{i}-{RUN}", None, {"name": f"N{i}"})
        r["recipient"]["phone"], r["channels"] = phone(7000 + i), ["sms"]
        requests.append(r)
    ids = produce(producer, requests)
    got = wait_stored(pipeline, ("twilio",), set(ids), 120)
    assert len(got) == n and set(got.values()) == {1}, f"{n - len(got)} lost, repeats {got.most_common(3)}"
    accounts = Counter(r["account_sid"] for r in receipts(pipeline, ("twilio",), set(ids)))
    assert accounts == {SECONDARY["HERALD_SMS__SECONDARY__ACCOUNT_SID"]: n}
    sent = clickhouse.execute("SELECT provider, count() FROM notification_events FINAL WHERE tenant = %(t)s "
                              "AND status = 'sent' GROUP BY provider", {"t": tenant})
    assert dict(sent) == {"twilio-secondary": n}


def test_an_sms_that_fails_for_good_reaches_the_user_by_email_once(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client
) -> None:
    tenant, user = new_tenant(), f"fallback-{RUN}"
    r = request(tenant, "fallback", TEMPLATE, user, f"{user}@example.com", {"name": "Fay"})
    # Twilio's magic number for an invalid 'To' (21211): a dead number, a failure for good.
    r["recipient"]["phone"], r["channels"], r["fallback_channel"] = "+15005550001", ["sms"], "email"
    [nid] = produce(producer, [r])
    mail = Mail(pipeline, [nid])
    assert mail.wait_for_all(60) == {nid: 1}
    time.sleep(2)
    assert mail.submissions() == {nid: 1}
    assert mail.message(nid, pipeline.email_domain)["Subject"] == "Hi Fay"
    found = wait_for_statuses(clickhouse, tenant, [nid], {"failed", "routed", "sent"}, 60)[nid]
    assert {"failed", "sent"} <= found
    assert events_with(clickhouse, tenant, "failed")[nid][0] == "twilio_21211"
    assert not receipts(pipeline, ("twilio",), {nid})


@pytest.fixture
def fallback_after_4s(pipeline: Settings) -> Iterator[None]:
    variables = {"HERALD_FALLBACK_AFTER_S": json.dumps({"timed-fallback": 4})}
    restart_with(pipeline, variables)
    yield
    restart_with(pipeline, dict.fromkeys(variables))


def test_an_sms_not_reported_delivered_in_time_reaches_the_user_by_email_once_and_a_delivered_one_does_not(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client, fallback_after_4s: None
) -> None:
    tenant = new_tenant()
    silent, heard = phone(8100), phone(8101)
    fault(pipeline, "twilio", silent=[silent])  # accepted, then never a delivery report
    requests = []
    for name, number in (("Sid", silent), ("Hal", heard)):
        r = request(tenant, f"timed-{name}", TEMPLATE, f"{name.lower()}-{RUN}", f"{name.lower()}-{RUN}@example.com",
                    {"name": name})
        r["recipient"]["phone"], r["channels"], r["fallback_channel"], r["category"] = number, ["sms"], "email", "timed-fallback"
        requests.append(r)
    silent_id, heard_id = produce(producer, requests)
    mail = Mail(pipeline, [silent_id, heard_id])
    assert mail.wait_for_all(60)[silent_id] == 1
    found = wait_for_statuses(clickhouse, tenant, [heard_id], {"sent", "delivered"}, 60)[heard_id]
    time.sleep(8)  # past the heard one's wait too
    assert mail.submissions() == {silent_id: 1}  # the delivered SMS has no email after it
    assert {"sent", "delivered"} <= found
    assert {r["notification_id"] for r in receipts(pipeline, ("twilio",), {silent_id, heard_id})} == {silent_id, heard_id}
    [detail] = [e["detail"] for e in events_with_detail(clickhouse, tenant, silent_id, "routed")
                if e["error_code"] == "fallback"]
    assert detail == "sms not reported delivered within 4 s: falling back to email"


def events_with_detail(clickhouse: Client, tenant: str, notification_id: str, status: str) -> list[dict[str, Any]]:
    rows = clickhouse.execute("SELECT error_code, detail FROM notification_events FINAL WHERE tenant = %(t)s "
                              "AND notification_id = %(n)s AND status = %(s)s",
                              {"t": tenant, "n": uuid.UUID(notification_id), "s": status})
    return [{"error_code": code, "detail": detail} for code, detail in rows]
