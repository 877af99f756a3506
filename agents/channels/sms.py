"""SMS over Twilio's Programmable Messaging REST API, behind guard.py's rate limits, breakers and failover.

Phone numbers are checked with `phonenumbers` and sent in E.164. Each send is one form-encoded
`POST /2010-04-01/Accounts/{sid}/Messages.json` over a long-lived httpx connection pool, carrying
`I-Twilio-Idempotency-Token` (the notification id): Twilio answers a resend after a crash with the
message it already took instead of sending it twice.

httpx rather than the `twilio` package's client: its `create_async` can neither add a header per
request (the idempotency token) nor show the headers of an error answer (Retry-After on 429/503).
The `twilio` package is still used for what it does well: checking status-callback signatures.

Status callbacks (the lead's gateway endpoint): `verify_status_callback` checks X-Twilio-Signature and
`delivery_report` maps the callback's form to a lifecycle status. The StatusCallback URL Herald gives
Twilio carries `?notification_id=…&tenant=…`, covered by the signature.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import phonenumbers
from mode import Service
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult
from twilio.request_validator import RequestValidator

from agents.channels.http import retry_after_s
from agents.channels.base import Channel, Outcome, Result, first_of
from agents.channels.guard import GuardedAdapter
from streams.settings import Settings, TwilioSettings

IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
# Where the gateway takes Twilio's status callbacks (gateway/callbacks.py).
STATUS_CALLBACK_PATH = "/v1/providers/twilio/status"
# Twilio's answers meaning the number will never take an SMS: invalid 'To', the recipient sent STOP,
# not a mobile number. The number must be removed from the user's contacts.
DEAD_CODES = frozenset({21211, 21610, 21614})
# What a phone number may be written with: '+', the country code and digits, and the usual separators.
# phonenumbers alone is lenient (it reads "tel:+1…", "+1…;x", "++1…", full-width digits, extensions).
PHONE_CHARS = re.compile(r"\+[0-9 ().\-]+")
IMPOSSIBLE = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "wrong length for its country",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "a local number; it needs its area code",
}

# GSM 03.38: the default alphabet (one septet each) and its extension table (escape + septet: two).
GSM7_BASIC = frozenset("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
                       "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def phone_number(raw: str) -> str:
    """The number in E.164; raises ValueError saying why `raw` is not a valid international number."""
    if not PHONE_CHARS.fullmatch(raw):
        raise ValueError("not a phone number: it must be '+', the country code and digits "
                         "(spaces, '-', '.' and parentheses allowed)")
    try:
        number = phonenumbers.parse(raw, None)
    except NumberParseException as exc:
        raise ValueError(f"not a phone number: {exc.args[0]}") from None
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != ValidationResult.IS_POSSIBLE:
        raise ValueError(f"not a possible number: {IMPOSSIBLE[possible]}")
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a number in its country's numbering plan")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


@dataclass(frozen=True)
class Segments:
    count: int
    encoding: str  # "GSM-7" or "UCS-2"

    def __str__(self) -> str:
        return f"{self.count} segment{'' if self.count == 1 else 's'} ({self.encoding})"


def segments(text: str) -> Segments:
    """How many SMS a text is sent as: GSM-7 when every character is in the GSM alphabet (160, or 153
    per part of a long message), else UCS-2 (70, or 67 per part)."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        return Segments(packed([2 if c in GSM7_EXTENSION else 1 for c in text], 160, 153), "GSM-7")
    return Segments(packed([len(c.encode("utf-16-le")) // 2 for c in text], 70, 67), "UCS-2")


def packed(units: list[int], single: int, part: int) -> int:
    """Segments for characters of the given sizes: one if all fit in `single`, else parts of `part`
    units, a character never split between two (an escape pair, a UTF-16 surrogate pair)."""
    if sum(units) <= single:
        return 1 if units else 0
    count, room = 1, part
    for size in units:
        if size > room:
            count, room = count + 1, part
        room -= size
    return count


def error_outcome(status: int, payload: Any, retry_after: str | None) -> Outcome:
    """Twilio's error answer, classified: 429/5xx transient, dead-number codes, other 4xx permanent."""
    error = payload if isinstance(payload, dict) else {}
    code = error.get("code")
    detail = f"HTTP {status}: Twilio error {code}: {error.get('message')}" if code else f"HTTP {status}"
    if status == 429 or status >= 500:
        return Outcome(Result.TRANSIENT, f"http_{status}", detail, retry_after_s(retry_after))
    if code in DEAD_CODES:
        return Outcome(Result.DEAD_ADDRESS, f"twilio_{code}", detail)
    return Outcome(Result.PERMANENT, f"twilio_{code}" if code else f"http_{status}", detail)


def callback_url(base: str, notification_id: Any, tenant: str) -> str:
    """The StatusCallback for one message, naming it: Twilio signs the whole URL, so these cannot be forged."""
    parts = urlsplit(base)
    query = "&".join(filter(None, (parts.query, urlencode({"notification_id": str(notification_id), "tenant": tenant}))))
    return urlunsplit(parts._replace(query=query))


class SmsAdapter(Service):
    """One Twilio account (or a provider speaking its protocol), with its own connection pool."""

    channel = "sms"

    def __init__(self, account: TwilioSettings, provider: str = "twilio", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.account = account
        self.provider = provider
        self.url = f"{account.base_url.rstrip('/')}/2010-04-01/Accounts/{account.account_sid}/Messages.json"
        self.client: httpx.AsyncClient | None = None

    async def on_start(self) -> None:
        self.client = httpx.AsyncClient(
            auth=(self.account.account_sid, self.account.auth_token.get_secret_value()),
            timeout=self.account.timeout_s,
            limits=httpx.Limits(max_connections=self.account.max_connections,
                                max_keepalive_connections=self.account.max_connections),
        )

    async def on_stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def form(self, task: dict[str, Any], to: str, body: str) -> dict[str, str]:
        account = self.account
        sender = {"From": account.from_number} if account.from_number else {}
        service = {"MessagingServiceSid": account.messaging_service_sid} if account.messaging_service_sid else {}
        callback = ({"StatusCallback": callback_url(account.status_callback, task["notification_id"], task["tenant"])}
                    if account.status_callback else {})
        return {"To": to, **sender, **service, "Body": body, **callback}

    async def send(self, task: dict[str, Any]) -> Outcome:
        assert self.client is not None, "SmsAdapter.send before the service started"
        # Checked here, where it is used, whichever stage or preference the number came from.
        try:
            to = phone_number(task["address"])
        except ValueError as exc:
            return Outcome(Result.PERMANENT, "invalid_address", f"{task['address']!r}: {exc}")
        body = task["content"]["text"] or ""
        try:
            response = await self.client.post(self.url, data=self.form(task, to, body),
                                              headers={IDEMPOTENCY_HEADER: str(task["notification_id"])})
        except httpx.TransportError as exc:  # refused, reset, timed out: the provider may be back soon
            return Outcome(Result.TRANSIENT, "http_connection", f"{type(exc).__name__}: {exc}")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success:
            sid = payload.get("sid") if isinstance(payload, dict) else None
            return Outcome(Result.SENT, detail=f"sid {sid}; {segments(body)}")
        return error_outcome(response.status_code, payload, response.headers.get("Retry-After"))


def with_status_callback(account: TwilioSettings, settings: Settings) -> TwilioSettings:
    """The account, posting its status callbacks to this Herald's gateway unless it names another URL."""
    if account.status_callback:
        return account
    return account.model_copy(update={"status_callback": f"{settings.public_url.rstrip('/')}{STATUS_CALLBACK_PATH}"})


def sms_adapter(settings: Settings) -> GuardedAdapter:
    """Twilio, and the secondary account when one is configured, each behind its bucket and breaker."""
    sms = settings.sms
    secondary = SmsAdapter(with_status_callback(sms.secondary, settings), "twilio-secondary") if sms.secondary else None
    return GuardedAdapter(SmsAdapter(with_status_callback(sms.twilio, settings), "twilio"), secondary, sms)


def verify_status_callback(url: str, params: Mapping[str, str], signature: str | None, auth_token: str) -> bool:
    """Whether a status callback really comes from Twilio: X-Twilio-Signature over the URL it was
    posted to and its form, keyed with the account's auth token."""
    return bool(signature) and RequestValidator(auth_token).validate(url, dict(params), signature)


class DeliveryReport(NamedTuple):
    status: str  # "delivered" or "failed"
    error_code: str | None = None


def delivery_report(params: Mapping[str, str]) -> DeliveryReport | None:
    """A status callback's final word on a message; None for the steps before it (queued, sent…)."""
    status = params.get("MessageStatus") or params.get("SmsStatus")
    if status == "delivered":
        return DeliveryReport("delivered")
    if status in ("undelivered", "failed"):
        return DeliveryReport("failed", f"twilio_{params.get('ErrorCode') or status}")
    return None


CHANNEL = Channel(
    name="sms",
    contact="phone number",
    addresses=lambda recipient, preferences: first_of(recipient["phone"], (preferences or {}).get("phone")),
    normalize=phone_number,
    invalid_reason="invalid_phone",
    adapter=sms_adapter,
    reports_delivery=True,  # Twilio's status callbacks (gateway/callbacks.py)
)
