"""Chat: a webhook URL from the user's preferences (`chat_webhook`), posted to Slack or to any other
allowed URL as a signed JSON webhook. The provider is chosen per task, by the URL.

Addresses. The URL comes from user data and Herald's workers POST to it, so it is checked before
anything is sent to it (server-side request forgery), by validate and again by the adapter:
http(s) only; no user info, whitespace, control characters or backslashes; the host must be one of
`HERALD_CHAT__ALLOWED_HOSTS` (exact names, or `*.example.com` for any subdomain; default
hooks.slack.com and the local peers' 127.0.0.1). An empty list allows any host that is not internal:
not an IP literal outside the public internet (loopback, private, link-local such as the cloud
metadata 169.254.169.254, in any spelling: 127.1, 2130706433), not localhost, .local, .internal nor a
single-label name. That check does not resolve names, so a public name pointing at an internal address
gets through: production should list its hosts. Plain http only to `HERALD_CHAT__HTTP_HOSTS` (default
127.0.0.1, the local peers). Generic webhooks do not follow redirects (one could lead anywhere);
slack-sdk follows them, which only Slack's own hosts (`HERALD_CHAT__SLACK_HOSTS`) can send.

Slack: a URL with Slack's incoming-webhook path (/services/T…/B…/…) on one of
`HERALD_CHAT__SLACK_HOSTS`, sent with slack-sdk's AsyncWebhookClient: `text` (the fallback Slack
shows in notifications) plus blocks: a header with the subject, a mrkdwn section with the text, and a
context line with the notification id. `&`, `<` and `>` are escaped in the text and the section (the
header is plain text, shown as it is), so a variable cannot mention @channel or make a link; nor can
a template (mrkdwn's *bold* and _italic_ still work). Slack's webhooks have no idempotency key: the delivered table is
the only guard, and a crash between Slack's answer and that table's write posts twice (the
notification id in the context line shows it). Slack's answer is a short error string; those
saying the hook, its channel or its workspace is gone are dead addresses.

Generic webhooks (any other allowed URL), with httpx: a JSON body
`{notification_id, tenant, user_id, category, subject, text, data, sent_at}` and these headers:

    X-Herald-Timestamp: 1717171717                 unix seconds when sent
    X-Herald-Signature: v1=<hex>                   HMAC-SHA256(HERALD_CHAT__WEBHOOK_SECRET, "<timestamp>.<raw body>")
    Idempotency-Key: <notification id>             the same on every retry of one notification

A receiver recomputes the HMAC over the raw body bytes (before parsing them), compares in constant
time, refuses a timestamp more than 5 minutes away from its clock (a replayed request), and keeps
the Idempotency-Key values it has seen to drop repeats. `verify_signature` does the first three:
copy it. 2xx is sent, 410 Gone a dead address, 429 and 5xx transient (Retry-After honoured), any
other status permanent.
"""

import hashlib
import hmac
import ipaddress
import json
import re
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import httpx
from mode import Service
from slack_sdk.webhook.async_client import AsyncWebhookClient

from agents.channels.http import host_matches, retry_after_s
from agents.channels.base import SENT, Channel, Outcome, Result, first_of
from agents.channels.guard import GuardSet
from streams.settings import ChatSettings, Settings, get_settings

FORBIDDEN = re.compile(r"[\s\\\x00-\x1f\x7f]")
HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
INTERNAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal")
SLACK_PATH = re.compile(r"/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+/?")
SLACK_ERROR = re.compile(r"[a-z_]{1,64}")
# Slack's answers meaning the webhook will never work again: the hook was removed or disabled, or its
# channel or workspace is gone. action_prohibited (a workspace restriction an admin may lift) is not.
SLACK_DEAD = frozenset({"no_service", "no_active_hooks", "invalid_token", "no_team", "team_disabled",
                        "channel_not_found", "channel_is_archived"})
SLACK_HEADER_MAX = 150  # Slack's limits on a header's and a section's text
SLACK_SECTION_MAX = 3000


# --- addresses ----------------------------------------------------------------------------------------


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # the spellings resolvers still accept for IPv4: 127.1, 2130706433, 0x7f.0.0.1
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_internal(host: str) -> bool:
    ip = ip_literal(host)
    if ip is not None:
        return not ip.is_global
    return host == "localhost" or host.endswith(INTERNAL_SUFFIXES) or "." not in host


def chat_url(raw: str, chat: ChatSettings) -> str:
    """The webhook URL normalised (lowercase scheme and host, no fragment); ValueError saying why it is
    not one Herald may post to (the module docstring has the rules)."""
    if FORBIDDEN.search(raw):
        raise ValueError("has whitespace, a control character or a backslash")
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValueError("is not an https URL")
    if "@" in parts.netloc:
        raise ValueError("has user info")
    host = (parts.hostname or "").rstrip(".")
    ip = ip_literal(host)
    if not HOST_NAME.fullmatch(host) and ip is None:
        raise ValueError(f"has no valid host ({host!r})")
    port = parts.port  # ValueError when it is not a port
    if chat.allowed_hosts and not host_matches(host, chat.allowed_hosts):
        raise ValueError(f"host {host} is not one of the allowed hosts")
    if not chat.allowed_hosts and is_internal(host):
        raise ValueError(f"host {host} is internal")
    if scheme == "http" and not host_matches(host, chat.http_hosts):
        raise ValueError(f"plain http to {host}; it must be https")
    netloc = (f"[{host}]" if ip is not None and ip.version == 6 else host) + (f":{port}" if port else "")
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def webhook_url(raw: str) -> str:
    """`chat_url` with the process's settings: the channel's `normalize`, which validate calls."""
    return chat_url(raw, get_settings().chat)


def is_slack(url: str, chat: ChatSettings) -> bool:
    parts = urlsplit(url)
    return host_matches(parts.hostname or "", chat.slack_hosts) and SLACK_PATH.fullmatch(parts.path) is not None


# --- shared by both providers ---------------------------------------------------------------------------


def connection_outcome(code: str, exc: Exception) -> Outcome:
    return Outcome(Result.TRANSIENT, code, f"{type(exc).__name__}: {exc}")


# --- Slack ------------------------------------------------------------------------------------------------


def slack_escape(text: str) -> str:
    """The three characters Slack's mrkdwn reads as control sequences (mentions, links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, ending with '…' when cut, never in the middle of an escape (&amp;)."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    entity = cut.rfind("&", limit - 6)
    if entity != -1 and ";" not in cut[entity:]:
        cut = cut[:entity]
    return cut + "…"


def slack_message(task: dict[str, Any]) -> dict[str, Any]:
    """The webhook's `text` (fallback) and `blocks` for a task's chat part."""
    content = task["content"]
    subject, text = content["subject"] or "", content["text"] or ""
    blocks: list[dict[str, Any]] = []
    if subject:  # plain_text: Slack shows it as it is, nothing to escape
        blocks.append({"type": "header", "text": {"type": "plain_text", "text": clip(subject, SLACK_HEADER_MAX)}})
    if text:
        section = clip(slack_escape(text), SLACK_SECTION_MAX)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": section}})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"Herald notification {task['notification_id']}"}]})
    return {"text": slack_escape(text or subject), "blocks": blocks}


def slack_outcome(status: int, body: str, retry_after: str | None) -> Outcome:
    error = body.strip() if SLACK_ERROR.fullmatch(body.strip()) else f"http_{status}"
    code, detail = f"slack_{error}", f"Slack answered {status}: {body[:200]}"
    if status == 200:
        return SENT
    if status == 429 or status >= 500:
        return Outcome(Result.TRANSIENT, code, detail, retry_after_s(retry_after))
    if error in SLACK_DEAD:
        return Outcome(Result.DEAD_ADDRESS, code, detail)
    return Outcome(Result.PERMANENT, code, detail)


class SlackWebhooks(Service):
    """Slack incoming webhooks, one aiohttp session for every hook."""

    provider = "slack"

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout_s = settings.chat.timeout_s
        self.session: aiohttp.ClientSession | None = None

    async def on_start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def on_stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(self, url: str, task: dict[str, Any]) -> Outcome:
        # No retry handlers: a failure goes back to deliver, whose retry topics do the waiting.
        client = AsyncWebhookClient(url, session=self.session, retry_handlers=[])
        try:
            response = await client.send_dict(slack_message(task))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return connection_outcome("slack_connection", exc)
        return slack_outcome(response.status_code, response.body, response.headers.get("Retry-After"))


# --- generic signed webhooks -------------------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Herald-Signature value: v1= and the hex HMAC-SHA256 of "<timestamp>.<body>"."""
    return "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, header: str, tolerance_s: float = 300,
                     now: float | None = None) -> bool:
    """A receiver's check of a Herald webhook: `header` (X-Herald-Signature) signs this raw `body` at
    `timestamp` (X-Herald-Timestamp) with `secret`, and the timestamp is within `tolerance_s` of now."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body).encode(), (header or "").encode())


def webhook_body(task: dict[str, Any], sent_at: datetime) -> bytes:
    content = task["content"]
    return json.dumps({
        "notification_id": str(task["notification_id"]), "tenant": task["tenant"],
        "user_id": task["recipient"]["user_id"], "category": task["category"], "subject": content["subject"],
        "text": content["text"], "data": content["data"], "sent_at": sent_at.isoformat(),
    }, ensure_ascii=False, separators=(",", ":")).encode()


def webhook_outcome(response: httpx.Response) -> Outcome:
    status = response.status_code
    code, detail = f"http_{status}", f"webhook answered {status}: {response.text[:200]}"
    if 200 <= status < 300:
        return SENT
    if status == 410:
        return Outcome(Result.DEAD_ADDRESS, code, detail)
    if status == 429 or status >= 500:
        return Outcome(Result.TRANSIENT, code, detail, retry_after_s(response.headers.get("Retry-After")))
    return Outcome(Result.PERMANENT, code, detail)  # 3xx too: redirects are not followed


class SignedWebhooks(Service):
    """Generic webhooks: JSON signed with the shared secret, one long-lived httpx client for every URL."""

    provider = "webhook"

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chat = settings.chat
        self.client: httpx.AsyncClient | None = None

    async def on_start(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.chat.timeout_s, follow_redirects=False)

    async def on_stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def post(self, url: str, task: dict[str, Any]) -> Outcome:
        assert self.client is not None, "SignedWebhooks is not started"
        sent_at = datetime.now(UTC)
        timestamp = str(int(sent_at.timestamp()))
        body = webhook_body(task, sent_at)
        headers = {"Content-Type": "application/json", "X-Herald-Timestamp": timestamp,
                   "X-Herald-Signature": signature(self.chat.webhook_secret.get_secret_value(), timestamp, body),
                   "Idempotency-Key": str(task["notification_id"])}
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:  # connection refused, timeouts, broken connections
            return connection_outcome("http_connection", exc)
        return webhook_outcome(response)


# --- the channel's adapter ------------------------------------------------------------------------------


class ChatAdapter(Service):
    """Checks the task's URL and hands it to Slack or to the signed webhooks; the Outcome names which."""

    channel = "chat"
    provider = "chat"  # in events only when the URL was refused before a provider was chosen

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chat = settings.chat
        self.slack = SlackWebhooks(settings)
        self.webhooks = SignedWebhooks(settings)
        self.guards = GuardSet(settings.chat)  # per webhook: one failing hook must not stop the others

    def on_init_dependencies(self) -> list[Service]:
        return [self.slack, self.webhooks]

    async def send(self, task: dict[str, Any]) -> Outcome:
        # Checked here, where it is used, whichever stage or preference the URL came from.
        try:
            url = chat_url(task["address"], self.chat)
        except ValueError as exc:
            return Outcome(Result.PERMANENT, "invalid_address", f"{task['address']!r}: {exc}")
        provider = self.slack if is_slack(url, self.chat) else self.webhooks
        return await self.guards.get(url, provider.provider).send(lambda: provider.post(url, task))


CHANNEL = Channel(
    name="chat",
    contact="chat webhook",
    addresses=lambda recipient, preferences: first_of((preferences or {}).get("chat_webhook")),
    normalize=webhook_url,
    invalid_reason="invalid_chat_webhook",
    adapter=ChatAdapter,
)
