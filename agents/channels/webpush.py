"""Browser push: Web Push (RFC 8030), VAPID auth (RFC 8292), aes128gcm payloads (RFC 8291), via pywebpush.

pywebpush encrypts with http_ece and signs with py_vapid; its `webpush_async` posts through a
shared aiohttp session. The payload is JSON: {"title", "body", "data", "notification_id"}.

A subscription's endpoint is a URL a browser gave, so before anything is sent to it, its host must
be an allowed push service (settings.push.webpush.allowed_hosts) and the scheme https (http only
for `http_hosts`, the local peer), and its keys must be a P-256 point (p256dh) and 16 bytes (auth).

Web push has no idempotency key; the Topic header is the notification id, so a resend replaces a
copy the push service still holds. Urgency follows the priority. Answers: 201 sent; 404, 410 the
subscription is gone; 429, 5xx transient (Retry-After honoured); 413 and any other 4xx permanent,
coded `webpush_<status>`.
"""

import asyncio
import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec
from mode import Service
from py_vapid import Vapid
from pywebpush import WebPushException, webpush_async

from agents.channels.http import host_matches
from agents.channels.base import SENT, Outcome, Result
from agents.channels.http import retry_after_s
from agents.channels.push_common import PushMessage, connection_outcome
from streams.settings import Settings, WebPushSettings
from tooling.peers import keys

PROVIDER = "webpush"
BASE64URL = re.compile(r"[A-Za-z0-9_\-]+={0,2}")
# Printable ASCII without spaces or backslashes: urlsplit silently drops tabs and line breaks, and
# browsers read a backslash as a slash, so either could make the host checked differ from the host used.
URL_CHARS = re.compile(r"[\x21-\x5b\x5d-\x7e]{1,2048}")


def b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not BASE64URL.fullmatch(value):
        raise ValueError(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not base64url") from exc


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def endpoint_url(value: Any, webpush: WebPushSettings) -> str:
    if not isinstance(value, str) or not URL_CHARS.fullmatch(value):
        raise ValueError("the endpoint is not a URL of at most 2048 printable ASCII characters")
    parts = urlsplit(value)
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise ValueError("the endpoint has credentials or a fragment")
    if not host or not host_matches(host, webpush.allowed_hosts):
        raise ValueError(f"the endpoint's host {host!r} is not an allowed push service")
    if parts.scheme != "https" and not (parts.scheme == "http" and host_matches(host, webpush.http_hosts)):
        raise ValueError("the endpoint is not https")
    return value


def subscription(value: str, webpush: WebPushSettings) -> dict[str, Any]:
    """The subscription a token holds ({endpoint, keys: {p256dh, auth}}), checked; or ValueError."""
    try:
        info = json.loads(b64decode(value, "a web push token"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"a web push token is the base64url of the subscription's JSON ({exc})") from exc
    if not isinstance(info, dict) or not isinstance(info.get("keys"), dict):
        raise ValueError("a web push subscription is {endpoint, keys: {p256dh, auth}}")
    p256dh = b64decode(info["keys"].get("p256dh"), "keys.p256dh")
    auth = b64decode(info["keys"].get("auth"), "keys.auth")
    if len(p256dh) != 65 or len(auth) != 16:
        raise ValueError("keys.p256dh is 65 bytes (an uncompressed P-256 point) and keys.auth 16 bytes")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError as exc:
        raise ValueError("keys.p256dh is not a point on P-256") from exc
    return {"endpoint": endpoint_url(info.get("endpoint"), webpush),
            "keys": {"p256dh": b64encode(p256dh), "auth": b64encode(auth)}}


def subscription_token(value: str, settings: Settings) -> str:
    """The token in one canonical form: base64url (unpadded) of the subscription's compact JSON."""
    info = subscription(value, settings.push.webpush)
    return b64encode(json.dumps(info, separators=(",", ":"), sort_keys=True).encode())


def payload(message: PushMessage) -> str:
    return json.dumps({"title": message.title, "body": message.body, "data": message.data,
                       "notification_id": message.notification_id}, ensure_ascii=False)


def vapid_key(webpush: WebPushSettings, settings: Settings) -> Vapid:
    """The VAPID key: the configured one (PEM, or raw base64url), else the local one."""
    key = webpush.vapid_private_key.get_secret_value() if webpush.vapid_private_key else keys.vapid_private_key(settings)
    return Vapid.from_pem(key.encode()) if key.lstrip().startswith("-----BEGIN") else Vapid.from_string(key)


def failure(exc: WebPushException) -> Outcome:
    status = exc.status_code or 0
    code, detail = f"webpush_{status}", str(exc)[:500]
    if status in (404, 410):
        return Outcome(Result.DEAD_ADDRESS, code, detail)
    if status == 429 or status >= 500:
        return Outcome(Result.TRANSIENT, code, detail, retry_after_s(exc.retry_after))
    return Outcome(Result.PERMANENT, code, detail)


class WebPushSender(Service):
    provider = PROVIDER

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.webpush = settings.push.webpush
        self.vapid: Vapid | None = None
        self.session: aiohttp.ClientSession | None = None

    async def on_start(self) -> None:
        self.vapid = vapid_key(self.webpush, self.settings)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.webpush.max_connections))

    async def on_stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, token: str, message: PushMessage) -> Outcome:
        assert self.session is not None and self.vapid is not None, "WebPushSender not started"
        info = json.loads(b64decode(token, "a web push token"))
        headers = {"Topic": message.notification_id, "Urgency": message.priority}
        try:
            await webpush_async(info, data=payload(message), vapid_private_key=self.vapid,
                                vapid_claims={"sub": self.webpush.vapid_subject}, ttl=self.webpush.ttl_s,
                                headers=headers, aiohttp_session=self.session, timeout=self.webpush.timeout_s)
        except WebPushException as exc:
            if exc.status_code is None:  # pywebpush's own refusal, before anything was sent
                return Outcome(Result.PERMANENT, "webpush_invalid", str(exc)[:500])
            return failure(exc)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return connection_outcome(PROVIDER, exc)
        return SENT
