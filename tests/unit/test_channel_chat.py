"""agents/channels/chat.py: webhook URL rules, the Slack and signed-webhook adapters against the
in-process chat peers (tooling/peers/slack.py, real slack-sdk and httpx clients), and verify_signature."""

import hashlib
import hmac
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from agents.channels.base import Outcome, Result
from agents.channels.http import retry_after_s
from agents.channels.chat import (CHANNEL, ChatAdapter, chat_url, clip, is_slack, signature,
                                  slack_escape, verify_signature)
from agents.validate import Problem, check
from streams.settings import ChatSettings, Settings
from tests.unit import records
from tooling.peers import slack as slack_peer
from tooling.peers.server import Fault, Peer, read_receipts

DEFAULTS = ChatSettings()
OPEN = ChatSettings(allowed_hosts=[], http_hosts=[])  # no allow-list: any public host
SLACK_PATH = "/services/T0001/B0002/Secret123"


# --- URL rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("https://hooks.slack.com/services/T1/B2/abc", "https://hooks.slack.com/services/T1/B2/abc"),
    ("HTTPS://Hooks.Slack.COM./services/T1/B2/abc#frag", "https://hooks.slack.com/services/T1/B2/abc"),
    ("http://127.0.0.1:4010/webhooks/ops?x=1", "http://127.0.0.1:4010/webhooks/ops?x=1"),
    ("https://hooks.slack.com", "https://hooks.slack.com/"),
])
def test_allowed_urls_are_normalised(raw: str, expected: str) -> None:
    assert chat_url(raw, DEFAULTS) == expected


@pytest.mark.parametrize(("raw", "why"), [
    ("http://hooks.slack.com/services/T1/B2/abc", "plain http"),
    ("https://chat.example.com/hook", "not one of the allowed hosts"),
    ("https://169.254.169.254/latest/meta-data", "not one of the allowed hosts"),
    ("http://localhost:4010/webhooks/ops", "not one of the allowed hosts"),
    ("http://127.1:4010/webhooks/ops", "not one of the allowed hosts"),
    ("file:///etc/passwd", "not an https URL"),
    ("ftp://hooks.slack.com/x", "not an https URL"),
    ("hooks.slack.com/services/T1/B2/abc", "not an https URL"),
    ("https://user:pw@hooks.slack.com/x", "user info"),
    ("https://hooks.slack.com@evil.example.com/x", "user info"),
    ("https://evil.example.com\\@hooks.slack.com/", "backslash"),
    ("https://hooks.slack.com/x\r\nX-Injected: 1", "control character"),
    ("https://hooks.slack.com/a b", "whitespace"),
    ("https://hooks.slack.com:port/x", "Port"),
    ("https://hooks%2eslack.com/x", "no valid host"),
    ("https:///x", "no valid host"),
    ("", "not an https URL"),
])
def test_refused_urls_with_the_default_allow_list(raw: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        chat_url(raw, DEFAULTS)


@pytest.mark.parametrize("host", [
    "169.254.169.254", "10.0.0.7", "192.168.1.1", "100.64.0.1", "0.0.0.0", "127.1", "2130706433", "0x7f.0.0.1",
    "[::1]", "[::ffff:127.0.0.1]", "[fd00::1]", "localhost", "api.localhost", "metadata.google.internal",
    "printer.local", "kubernetes",
])
def test_internal_hosts_are_refused_without_an_allow_list(host: str) -> None:
    with pytest.raises(ValueError, match="is internal"):
        chat_url(f"https://{host}/hook", OPEN)


def test_without_an_allow_list_public_https_hosts_pass_and_http_does_not() -> None:
    assert chat_url("https://chat.example.com/hook", OPEN) == "https://chat.example.com/hook"
    assert chat_url("https://[2606:4700::1111]:8443/h", OPEN) == "https://[2606:4700::1111]:8443/h"
    with pytest.raises(ValueError, match="plain http"):
        chat_url("http://chat.example.com/hook", OPEN)


def test_wildcard_entries_allow_subdomains_only() -> None:
    chat = ChatSettings(allowed_hosts=["*.Example.com"])
    assert chat_url("https://a.b.example.com/x", chat) == "https://a.b.example.com/x"
    for refused in ("https://example.com/x", "https://evilexample.com/x", "https://example.com.evil.net/x"):
        with pytest.raises(ValueError, match="not one of the allowed hosts"):
            chat_url(refused, chat)


def test_slack_is_chosen_by_host_and_path() -> None:
    assert is_slack("https://hooks.slack.com/services/T1/B2/abc", DEFAULTS)
    assert is_slack(f"http://127.0.0.1:4010{SLACK_PATH}", DEFAULTS)
    assert not is_slack("http://127.0.0.1:4010/webhooks/ops", DEFAULTS)
    assert not is_slack("https://hooks.slack.com/services/X1/B2/abc", DEFAULTS)
    assert not is_slack("https://chat.example.com/services/T1/B2/abc", ChatSettings(allowed_hosts=[]))


def test_the_address_comes_from_preferences_only() -> None:
    recipient = records.recipient(email="a@example.com")
    assert CHANNEL.addresses(recipient, records.preferences(chat_webhook="https://hooks.slack.com/x")) == [
        "https://hooks.slack.com/x"]
    assert CHANNEL.addresses(recipient, None) == []


def test_validate_rejects_a_refused_webhook() -> None:
    notification = records.notification(channels=["chat"], rendered=[], template_version=None)
    template = records.template(parts=[records.part("chat", html=None)])
    good = records.preferences(chat_webhook="https://hooks.slack.com/services/T1/B2/abc")
    bad = records.preferences(chat_webhook="https://169.254.169.254/latest/meta-data")
    assert check(notification, template, good) == ["chat"]
    problem = check(notification, template, bad)
    assert isinstance(problem, Problem) and problem.reason_code == "invalid_chat_webhook"
    assert "169.254.169.254" in problem.detail


# --- Slack message, Retry-After, signatures ---------------------------------------------------------------


def test_slack_escape_and_clip() -> None:
    assert slack_escape("<!channel> & <https://x|y>") == "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"
    assert clip("abcdef", 6) == "abcdef"
    assert clip("abcdefg", 6) == "abcde…"
    assert clip("abc&amp;", 6) == "abc…"  # the escape is dropped whole, never cut in half


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("-3") == 0.0
    assert 55 < retry_after_s(format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)) <= 60
    for unusable in (None, "", "soon", "inf"):
        assert retry_after_s(unusable) is None


NOW = 1_717_171_717
BODY = b'{"notification_id":"x","text":"hi"}'


def signed(secret: str = "s3cret", timestamp: int = NOW, body: bytes = BODY) -> str:
    return "v1=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    assert signature("s3cret", str(NOW), BODY) == signed()


def test_verify_signature_accepts_a_fresh_valid_one() -> None:
    assert verify_signature("s3cret", str(NOW), BODY, signed(), now=NOW + 299)
    assert verify_signature("s3cret", str(int(time.time())), BODY, signed(timestamp=int(time.time())))


@pytest.mark.parametrize(("timestamp", "body", "header", "now"), [
    (str(NOW), BODY, signed(secret="other"), NOW),  # wrong secret
    (str(NOW), BODY + b" ", signed(), NOW),  # tampered body
    (str(NOW + 1), BODY, signed(), NOW),  # tampered timestamp
    (str(NOW), BODY, signed(), NOW + 301),  # stale: a replay
    (str(NOW), BODY, signed(), NOW - 301),  # from the future
    ("soon", BODY, signed(), NOW),
    (str(NOW), BODY, "", NOW),
    (str(NOW), BODY, signed().removeprefix("v1="), NOW),
    (str(NOW), BODY, "v1=é", NOW),
])
def test_verify_signature_refuses(timestamp: str, body: bytes, header: str, now: int) -> None:
    assert not verify_signature("s3cret", timestamp, body, header, now=now)


# --- the adapters against the in-process peers --------------------------------------------------------------


@dataclass
class Peers:
    slack: Peer
    webhook: Peer
    base: str

    def received(self, peer: Peer) -> list[dict[str, Any]]:
        return list(read_receipts(peer.directory))


@pytest.fixture
async def peers(tmp_path: Any) -> AsyncIterator[Peers]:
    settings = Settings(data_dir=tmp_path, chat=ChatSettings(webhook_secret=SecretStr("peer-secret")))
    slack, webhook = Peer("slack", tmp_path / "slack"), Peer("webhook", tmp_path / "webhook")
    app = web.Application()
    app.add_routes(slack_peer.routes(slack, settings) + slack_peer.webhook_routes(webhook, settings))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Peers(slack, webhook, f"http://127.0.0.1:{server.port}")
    finally:
        await server.close()


@pytest.fixture
async def adapter_for() -> AsyncIterator[Callable[..., Any]]:
    started: list[ChatAdapter] = []

    async def start(secret: str = "peer-secret", timeout_s: float = 5.0) -> ChatAdapter:
        adapter = ChatAdapter(Settings(chat=ChatSettings(webhook_secret=SecretStr(secret), timeout_s=timeout_s)))
        await adapter.start()
        started.append(adapter)
        return adapter

    yield start
    for adapter in started:
        await adapter.stop()


def chat_task(address: str, **content: Any) -> dict[str, Any]:
    part = records.content("chat", html=None, **content)
    return records.delivery_task(channel="chat", address=address, content=part)


async def test_slack_receives_escaped_text_and_blocks(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    task = chat_task(peers.base + SLACK_PATH, subject="Deploy <done> & ok", text="Hi <!channel> & <https://x|y>")
    assert await adapter.send(task) == Outcome(Result.SENT, provider="slack")
    [receipt] = peers.received(peers.slack)
    assert receipt["hook"] == SLACK_PATH
    escaped = "Hi &lt;!channel&gt; &amp; &lt;https://x|y&gt;"
    assert receipt["text"] == escaped
    header, section, context = receipt["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "Deploy <done> & ok"}}
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": escaped}}
    assert context["type"] == "context" and str(records.NOTIFICATION_ID) in context["elements"][0]["text"]


async def test_slack_long_parts_are_clipped_to_slack_limits(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    task = chat_task(peers.base + SLACK_PATH, subject="S" * 400, text="&" * 5000)
    assert (await adapter.send(task)).result is Result.SENT  # the peer refuses blocks over Slack's limits
    [receipt] = peers.received(peers.slack)
    header, section, _ = receipt["blocks"]
    assert len(header["text"]["text"]) == 150
    assert len(section["text"]["text"]) <= 3000 and section["text"]["text"].endswith("&amp;…")


@pytest.mark.parametrize(("fault", "expected"), [
    (Fault(status=410), Outcome(Result.DEAD_ADDRESS, "slack_channel_is_archived", provider="slack")),
    (Fault(status=429, retry_after_s=7), Outcome(Result.TRANSIENT, "slack_rate_limited", retry_after_s=7.0,
                                                  provider="slack")),
    (Fault(status=500), Outcome(Result.TRANSIENT, "slack_rollup_error", provider="slack")),
    (Fault(status=403), Outcome(Result.PERMANENT, "slack_action_prohibited", provider="slack")),
    (Fault(dead={SLACK_PATH}), Outcome(Result.DEAD_ADDRESS, "slack_no_service", provider="slack")),
])
async def test_slack_errors_are_classified(peers: Peers, adapter_for: Any, fault: Fault, expected: Outcome) -> None:
    adapter = await adapter_for()
    peers.slack.faults = fault
    outcome = await adapter.send(chat_task(peers.base + SLACK_PATH))
    assert (outcome.result, outcome.code, outcome.retry_after_s, outcome.provider) == (
        expected.result, expected.code, expected.retry_after_s, expected.provider)
    assert peers.received(peers.slack) == []


@pytest.mark.parametrize(("path", "body", "status", "answer"), [
    (SLACK_PATH, b'{"text": "hi"}', 200, "ok"),
    (SLACK_PATH, b"text=hi", 400, "invalid_payload"),
    (SLACK_PATH, b"{}", 400, "no_text"),
    (SLACK_PATH, b'{"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": ""}}]}', 400, "invalid_blocks"),
    ("/services/X0001/B0002/Secret123", b'{"text": "hi"}', 404, "no_service"),
])
async def test_slack_peer_answers_as_slack(peers: Peers, path: str, body: bytes, status: int, answer: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(peers.base + path, content=body, headers={"Content-Type": "application/json"})
    assert (response.status_code, response.text) == (status, answer)
    assert response.headers["Content-Type"].startswith("text/plain")
    assert len(peers.received(peers.slack)) == (status == 200)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_slack_unreachable_is_transient(adapter_for: Any) -> None:
    adapter = await adapter_for()
    outcome = await adapter.send(chat_task(f"http://127.0.0.1:{unused_port()}{SLACK_PATH}"))
    assert (outcome.result, outcome.code, outcome.provider) == (Result.TRANSIENT, "slack_connection", "slack")


async def test_webhook_is_signed_and_the_peer_verifies_it(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    task = chat_task(peers.base + "/webhooks/ops", data={"order": "42"})
    assert await adapter.send(task) == Outcome(Result.SENT, provider="webhook")
    [receipt] = peers.received(peers.webhook)
    assert receipt["hook"] == "ops" and receipt["idempotency_key"] == str(records.NOTIFICATION_ID)
    body = receipt["body"]
    sent_at = body.pop("sent_at")
    assert body == {"notification_id": str(records.NOTIFICATION_ID), "tenant": "acme", "user_id": "user-1",
                    "category": "transactional", "subject": "Hello Alice",
                    "text": "Hi Alice", "data": {"order": "42"}}
    assert abs(datetime.fromisoformat(sent_at) - datetime.now(UTC)) < timedelta(seconds=10)


async def test_webhook_with_a_forged_signature_is_refused(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for(secret="not-the-peer-secret")
    outcome = await adapter.send(chat_task(peers.base + "/webhooks/ops"))
    assert (outcome.result, outcome.code, outcome.provider) == (Result.PERMANENT, "http_401", "webhook")
    assert peers.received(peers.webhook) == []


async def test_peer_refuses_a_stale_replay(peers: Peers) -> None:
    stale = str(int(time.time()) - 600)
    headers = {"X-Herald-Timestamp": stale, "X-Herald-Signature": signature("peer-secret", stale, BODY)}
    async with httpx.AsyncClient() as client:
        response = await client.post(peers.base + "/webhooks/ops", content=BODY, headers=headers)
    assert response.status_code == 401
    assert peers.received(peers.webhook) == []


async def test_webhook_repeat_is_stored_once(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    task = chat_task(peers.base + "/webhooks/ops")
    assert [(await adapter.send(task)).result for _ in range(2)] == [Result.SENT, Result.SENT]
    receipts = peers.received(peers.webhook)
    assert [r["duplicate"] for r in receipts] == [False, True]
    assert {r["idempotency_key"] for r in receipts} == {str(records.NOTIFICATION_ID)}


@pytest.mark.parametrize(("fault", "expected"), [
    (Fault(dead={"ops"}), (Result.DEAD_ADDRESS, "http_410", None)),
    (Fault(status=503, retry_after_s=2), (Result.TRANSIENT, "http_503", 2.0)),
    (Fault(status=429), (Result.TRANSIENT, "http_429", None)),
    (Fault(status=400), (Result.PERMANENT, "http_400", None)),
])
async def test_webhook_errors_are_classified(peers: Peers, adapter_for: Any, fault: Fault,
                                             expected: tuple[Result, str, float | None]) -> None:
    adapter = await adapter_for()
    peers.webhook.faults = fault
    outcome = await adapter.send(chat_task(peers.base + "/webhooks/ops"))
    assert (outcome.result, outcome.code, outcome.retry_after_s, outcome.provider) == (*expected, "webhook")


async def test_webhook_timeout_is_transient(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for(timeout_s=0.2)
    peers.webhook.faults = Fault(delay_s=1.0)
    outcome = await adapter.send(chat_task(peers.base + "/webhooks/ops"))
    assert (outcome.result, outcome.code, outcome.provider) == (Result.TRANSIENT, "http_connection", "webhook")


async def test_a_refused_url_is_never_contacted(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    outcome = await adapter.send(chat_task(f"http://localhost:{peers.base.rsplit(':', 1)[1]}/webhooks/ops"))
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "invalid_address")
    assert "not one of the allowed hosts" in outcome.detail
    assert peers.received(peers.webhook) == []
