"""iOS push through the Apple Push Notification service: HTTP/2 over TLS with token (ES256 JWT) auth.

Sent with httpx over HTTP/2, the JWT made with PyJWT. Not aioapns: its client fixes Apple's host
and port as class attributes of its connection protocol (pointing it at a local peer means
replacing that class), it gives no access to response headers (Retry-After), it keeps its
provider token private to each connection (an ExpiredProviderToken cannot make it mint a new one),
and a refused answer without a JSON body leaves its request waiting forever.

The apns-id header is the notification id: it is how APNs names a notification. APNs does not
deduplicate on it, so apns-collapse-id is the notification id too: a resend after a lost answer
(APNs closes connections now and then, mid-request) replaces the alert on the device instead of
showing it twice. Apple's answers: 200 sent; 410 Unregistered or 400 BadDeviceToken,
the device token is dead; 429, 5xx transient; 403 ExpiredProviderToken, a new token on the next
send (transient); any other 4xx permanent, coded `apns_<reason>`.
"""

import json
import re
import time
import uuid
from typing import Any

import httpx
import jwt
from mode import Service

from agents.channels.base import SENT, Outcome, Result
from agents.channels.http import retry_after_s
from agents.channels.push_common import PushMessage, connection_outcome
from streams.settings import ApnsSettings, Settings
from tooling.peers import keys

PROVIDER = "apns"
# Device tokens are 32 bytes today; Apple says they may grow, so up to 100 bytes are accepted.
DEVICE_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2}){32,100}")
DEAD_REASONS = frozenset({"Unregistered", "BadDeviceToken"})


def device_token(value: str, settings: Settings) -> str:
    """The device token as lowercase hex, or ValueError."""
    if not DEVICE_TOKEN.fullmatch(value):
        raise ValueError("an APNs device token is 64 to 200 hex digits, an even number of them")
    return value.lower()


def payload(message: PushMessage) -> bytes:
    # `aps` last: a data key cannot replace it.
    body = {**message.data, "aps": {"alert": {"title": message.title, "body": message.body}}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class ProviderToken:
    """The provider token, an ES256 JWT, reused for `REUSE_S`: APNs refuses a token older than an hour
    (ExpiredProviderToken) and one renewed more often than every 20 minutes (TooManyProviderTokenUpdates)."""

    REUSE_S = 40 * 60

    def __init__(self, private_key: str, key_id: str, team_id: str) -> None:
        self.private_key, self.key_id, self.team_id = private_key, key_id, team_id
        self.value: str | None = None
        self.issued_at = 0.0

    def header(self) -> str:
        now = time.time()
        if self.value is None or now - self.issued_at > self.REUSE_S:
            self.value = jwt.encode({"iss": self.team_id, "iat": int(now)}, self.private_key, algorithm="ES256",
                                    headers={"kid": self.key_id})
            self.issued_at = now
        return f"bearer {self.value}"

    def expire(self) -> None:
        self.value = None


def outcome(response: httpx.Response, token: ProviderToken) -> Outcome:
    if response.status_code == 200:
        return SENT
    try:
        reason = str(response.json().get("reason") or "")
    except (ValueError, AttributeError):
        reason = ""
    code = f"apns_{reason or response.status_code}"
    detail = f"APNs {response.status_code} {reason}".rstrip()
    if response.status_code == 410 or reason in DEAD_REASONS:
        return Outcome(Result.DEAD_ADDRESS, code, detail)
    if response.status_code == 403 and reason == "ExpiredProviderToken":
        token.expire()
        return Outcome(Result.TRANSIENT, code, detail)
    if response.status_code == 429 or response.status_code >= 500:
        return Outcome(Result.TRANSIENT, code, detail, retry_after_s(response.headers.get("retry-after")))
    return Outcome(Result.PERMANENT, code, detail)


class ApnsSender(Service):
    provider = PROVIDER

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.apns = settings.push.apns
        self.token: ProviderToken | None = None
        self.client: httpx.AsyncClient | None = None

    async def on_start(self) -> None:
        # Read here, not when deliver builds its adapters: the local key may have to be made first.
        apns, settings = self.apns, self.settings
        private_key = apns.private_key.get_secret_value() if apns.private_key else keys.apns_auth_key(settings)
        self.token = ProviderToken(private_key, apns.key_id, apns.team_id)
        self.client = httpx.AsyncClient(
            http2=True, verify=keys.client_tls_context(self.apns.ca_file, self.apns.host, self.settings), timeout=self.apns.timeout_s,
            base_url=f"https://{self.apns.host}:{self.apns.port}")

    async def on_stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def send(self, token: str, message: PushMessage) -> Outcome:
        assert self.client is not None and self.token is not None, "ApnsSender not started"
        headers = {
            "authorization": self.token.header(),
            "apns-id": str(uuid.UUID(message.notification_id)),
            "apns-topic": self.apns.topic,
            "apns-push-type": "alert",
            "apns-priority": "10" if message.high else "5",
            "apns-collapse-id": message.notification_id,
        }
        try:
            response = await self.client.post(f"/3/device/{token}", content=payload(message), headers=headers)
        except httpx.HTTPError as exc:
            return connection_outcome(PROVIDER, exc)
        return outcome(response, self.token)
