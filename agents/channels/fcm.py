"""Android push through Firebase Cloud Messaging's HTTP v1 API, with a service account's OAuth2 token.

    POST {base_url}/v1/projects/{project}/messages:send   Authorization: Bearer <access token>
    {"message": {"token": …, "notification": {"title", "body"}, "data": {…}, "android": {"priority", "collapse_key"}}}

The access token comes from google-auth's service account credentials (the JWT-bearer grant at
`token_uri`), cached until it nears expiry. google-auth refreshes through `requests`, so the
refresh runs in a thread, one at a time; it happens about once an hour. The sends themselves go
through httpx.

FCM v1 has no idempotency key; the collapse key is the notification id, so a resend replaces a
copy still waiting for the device. Answers (the error's `details[].errorCode`, else its `status`):
200 sent; UNREGISTERED, SENDER_ID_MISMATCH, or INVALID_ARGUMENT about the token, the token is dead;
429 QUOTA_EXCEEDED, 503 UNAVAILABLE, 500 INTERNAL transient (Retry-After honoured); 401 the
access token was refused: a new one next time (transient); anything else permanent, coded `fcm_<errorCode>`.
"""

import asyncio
import json
import re
from typing import Any

import google.auth.exceptions
import httpx
import requests
from google.auth.transport.requests import Request
from google.oauth2 import service_account
from mode import Service

from agents.channels.base import SENT, Outcome, Result
from agents.channels.http import retry_after_s
from agents.channels.push_common import PushMessage, connection_outcome
from streams.settings import FcmSettings, Settings
from tooling.peers import keys

PROVIDER = "fcm"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# Registration tokens are ~150-200 characters of base64url and a colon; FCM documents no bound.
REGISTRATION_TOKEN = re.compile(r"[A-Za-z0-9_\-:]{32,1024}")
DEAD_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
TRANSIENT_CODES = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})


def registration_token(value: str, settings: Settings) -> str:
    if not REGISTRATION_TOKEN.fullmatch(value):
        raise ValueError("an FCM registration token is 32 to 1024 letters, digits, '-', '_' or ':'")
    return value


def service_account_info(fcm: FcmSettings, settings: Settings) -> dict[str, Any]:
    """The configured service account key; neither file nor JSON set: the local one."""
    if fcm.service_account_json:
        info = json.loads(fcm.service_account_json.get_secret_value())
    elif fcm.service_account_file:
        info = json.loads(fcm.service_account_file.read_text())
    else:
        info = keys.fcm_service_account(settings)
    return {**info, "token_uri": fcm.token_uri} if fcm.token_uri else info


class AccessToken:
    """The service account's OAuth2 access token, refreshed when google-auth says it is no longer
    valid (expired, or close to it) or when FCM refused it."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        self.session = requests.Session()
        self.lock = asyncio.Lock()

    async def get(self) -> str:
        async with self.lock:  # one refresh at a time; the others wait for its token
            if not self.credentials.valid:
                await asyncio.to_thread(self.credentials.refresh, Request(self.session))
        return str(self.credentials.token)

    def expire(self) -> None:
        self.credentials.token = None

    def close(self) -> None:
        self.session.close()


def body(token: str, message: PushMessage) -> dict[str, Any]:
    return {"message": {
        "token": token,
        "notification": {"title": message.title, "body": message.body},
        "data": message.data,
        "android": {"priority": "HIGH" if message.high else "NORMAL", "collapse_key": message.notification_id},
    }}


def error_of(response: httpx.Response) -> tuple[str, str, list[dict[str, Any]]]:
    """FCM's error code (details[].errorCode, else the status), message and details."""
    try:
        error = response.json()["error"]
        details = [d for d in error.get("details") or () if isinstance(d, dict)]
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"http_{response.status_code}", response.text[:200], []
    code = next((d["errorCode"] for d in details if d.get("errorCode")), None) or error.get("status")
    return str(code or f"http_{response.status_code}"), str(error.get("message") or ""), details


def about_the_token(message: str, details: list[dict[str, Any]]) -> bool:
    fields = {v.get("field") for d in details for v in d.get("fieldViolations") or () if isinstance(v, dict)}
    return "message.token" in fields or "registration token" in message.lower()


def outcome(response: httpx.Response, access: AccessToken) -> Outcome:
    if response.status_code == 200:
        return SENT
    code, message, details = error_of(response)
    outcome_code, detail = f"fcm_{code}", f"FCM {response.status_code} {code}: {message}"
    if code in DEAD_CODES or (code == "INVALID_ARGUMENT" and about_the_token(message, details)):
        return Outcome(Result.DEAD_ADDRESS, outcome_code, detail)
    if response.status_code == 401:
        access.expire()
        return Outcome(Result.TRANSIENT, outcome_code, detail)
    if code in TRANSIENT_CODES or response.status_code == 429 or response.status_code >= 500:
        return Outcome(Result.TRANSIENT, outcome_code, detail, retry_after_s(response.headers.get("retry-after")))
    return Outcome(Result.PERMANENT, outcome_code, detail)


def refresh_outcome(exc: google.auth.exceptions.GoogleAuthError) -> Outcome:
    """The token endpoint refused or failed: transient unless google-auth says retrying cannot help."""
    retryable = getattr(exc, "retryable", True) or isinstance(exc, google.auth.exceptions.TransportError)
    return Outcome(Result.TRANSIENT if retryable else Result.PERMANENT, "fcm_oauth", f"{type(exc).__name__}: {exc}")


class FcmSender(Service):
    provider = PROVIDER

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.fcm = settings.push.fcm
        self.access: AccessToken | None = None
        self.client: httpx.AsyncClient | None = None

    async def on_start(self) -> None:
        self.access = AccessToken(service_account_info(self.fcm, self.settings))
        self.client = httpx.AsyncClient(
            base_url=self.fcm.base_url, timeout=self.fcm.timeout_s,
            limits=httpx.Limits(max_connections=self.fcm.max_connections))

    async def on_stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.access is not None:
            self.access.close()

    async def send(self, token: str, message: PushMessage) -> Outcome:
        assert self.client is not None and self.access is not None, "FcmSender not started"
        try:
            bearer = await self.access.get()
        except google.auth.exceptions.GoogleAuthError as exc:
            return refresh_outcome(exc)
        try:
            response = await self.client.post(f"/v1/projects/{self.fcm.project_id}/messages:send",
                                              json=body(token, message), headers={"authorization": f"Bearer {bearer}"})
        except httpx.HTTPError as exc:
            return connection_outcome(PROVIDER, exc)
        return outcome(response, self.access)
