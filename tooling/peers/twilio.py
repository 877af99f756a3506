"""Local peer of the SMS channel: Twilio's Programmable Messaging REST API (provider `twilio`).

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded, HTTP Basic auth with the
account SID and auth token of one of the configured accounts (HERALD_SMS__TWILIO__…, and
HERALD_SMS__SECONDARY__… when set). It answers as api.twilio.com does, so the `twilio` package
itself works against it (tests/unit/test_channel_sms.py):

- 201 with the Message resource (sid `SM` + 32 hex, status `queued`, num_segments, RFC 2822 dates…);
- errors as Twilio's JSON `{"code", "message", "more_info", "status"}`: 401 code 20003 (wrong
  credentials), 400 21604/21211 (no or an invalid `To`, not E.164), 21603 (no `From` nor
  `MessagingServiceSid`), 21602/21617 (no body, body over 1,600 characters), 21610 for a `dead`
  number (it sent STOP), and Twilio's test-credential magic numbers: +15005550001 (21211),
  +15005550004 (21610), +15005550009 (21614). Injected faults answer with Twilio's code for
  their status (429 → 20429, 503 → 20503…) and Retry-After when set.
- `I-Twilio-Idempotency-Token`: a repeat within an account gets the first answer again and is
  recorded as a duplicate.
- `StatusCallback`: shortly after accepting, the peer posts `sent` then `delivered` to it, as Twilio
  does, signed with X-Twilio-Signature (the account's auth token); a number marked dead by then gets
  `undelivered` with ErrorCode 30003 (unreachable handset) instead, and a `silent` one gets none.

It records each accepted message: account, to, from, messaging service, body, sid, segments.
"""

import asyncio
import hmac
import logging
import re
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

import aiohttp
from aiohttp import web
from multidict import MultiDictProxy
from twilio.request_validator import RequestValidator

from agents.channels.sms import IDEMPOTENCY_HEADER, segments
from streams.settings import Settings
from tooling.peers.server import Peer

log = logging.getLogger(__name__)

API = "/2010-04-01"
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
MAX_BODY_CHARS = 1600
CALLBACK_DELAY_S = 0.05
# Twilio's own codes for an HTTP status the fault injection asks for.
STATUS_CODES = {400: 21211, 401: 20003, 403: 20403, 404: 20404, 429: 20429, 500: 20500, 503: 20503}
STATUS_MESSAGES = {401: "Authenticate", 429: "Too Many Requests", 500: "Internal Server Error",
                   503: "Service Unavailable"}
# Twilio's magic 'To' numbers for test credentials, and the error each gets.
MAGIC_NUMBERS = {"+15005550001": 21211, "+15005550004": 21610, "+15005550009": 21614}
MESSAGES = {
    21211: "Invalid 'To' Phone Number",
    21602: "Message body is required.",
    21603: "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}


def twilio_error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}
    return web.json_response(body, status=status, headers=headers)


def accounts(settings: Settings) -> dict[str, str]:
    """Account SID → auth token, for each Twilio account Herald is configured with."""
    configured = (settings.sms.twilio, settings.sms.secondary)
    return {account.account_sid: account.auth_token.get_secret_value() for account in configured if account}


def authorized(request: web.Request, tokens: dict[str, str]) -> bool:
    """Basic auth with the URL's account SID and that account's token."""
    try:
        auth = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
    except ValueError:
        return False
    sid = request.match_info["sid"]
    token = tokens.get(sid)
    return auth.login == sid and token is not None and hmac.compare_digest(auth.password, token)


def form_problem(form: MultiDictProxy[Any], peer: Peer) -> int | None:
    """Twilio's error code for a message it would refuse, or None."""
    to, body = str(form.get("To", "")), str(form.get("Body", ""))
    if not to:
        return 21604
    if not E164.fullmatch(to):
        return 21211
    if to in MAGIC_NUMBERS:
        return MAGIC_NUMBERS[to]
    if peer.is_dead(to):
        return 21610
    if not (form.get("From") or form.get("MessagingServiceSid")):
        return 21603
    if not body:
        return 21602
    if len(body) > MAX_BODY_CHARS:
        return 21617
    return None


def message_resource(sid: str, form: MultiDictProxy[Any]) -> dict[str, Any]:
    """The Message resource as Twilio answers a create (`queued`; `accepted` for a Messaging Service
    that still picks the sender)."""
    message_sid = "SM" + uuid.uuid4().hex
    now = format_datetime(datetime.now(timezone.utc))
    body = str(form["Body"])
    uri = f"{API}/Accounts/{sid}/Messages/{message_sid}"
    return {
        "account_sid": sid, "api_version": "2010-04-01", "body": body, "date_created": now, "date_sent": None,
        "date_updated": now, "direction": "outbound-api", "error_code": None, "error_message": None,
        "from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"), "num_media": "0",
        "num_segments": str(segments(body).count), "price": None, "price_unit": "USD", "sid": message_sid,
        "status": "queued" if form.get("From") else "accepted",
        "subresource_uris": {"media": f"{uri}/Media.json"}, "to": form["To"], "uri": f"{uri}.json",
    }


def callback_forms(message: dict[str, Any], dead: bool) -> list[dict[str, str]]:
    """The status callbacks Twilio would post for a message: `sent`, then its final status."""
    common = {"AccountSid": message["account_sid"], "ApiVersion": "2010-04-01", "From": message["from"] or "",
              "MessageSid": message["sid"], "SmsSid": message["sid"], "To": message["to"]}
    final = {"MessageStatus": "undelivered", "ErrorCode": "30003"} if dead else {"MessageStatus": "delivered"}
    forms = [{**common, "MessageStatus": "sent"}, {**common, **final}]
    return [{**form, "SmsStatus": form["MessageStatus"]} for form in forms]


async def post_callbacks(url: str, message: dict[str, Any], token: str, peer: Peer) -> None:
    await asyncio.sleep(CALLBACK_DELAY_S)
    if peer.is_silent(message["to"]):
        return
    validator = RequestValidator(token)
    async with aiohttp.ClientSession() as session:
        for form in callback_forms(message, peer.is_dead(message["to"])):
            headers = {"X-Twilio-Signature": validator.compute_signature(url, form)}
            try:
                async with session.post(url, data=form, headers=headers) as response:
                    log.info("twilio peer: callback %s %s → %s", message["sid"], form["MessageStatus"], response.status)
            except aiohttp.ClientError as exc:  # Twilio does not retry a failed status callback either
                log.warning("twilio peer: callback to %s failed: %s", url, exc)


def routes(peer: Peer, settings: Settings) -> list[web.RouteDef]:
    tokens = accounts(settings)
    answers: dict[str, dict[str, Any]] = {}  # "<account>/<idempotency token>" → the message first created
    callbacks: set[asyncio.Task[None]] = set()  # held so that a pending callback is not garbage-collected

    async def create_message(request: web.Request) -> web.Response:
        status = await peer.fault(scope=request.match_info["sid"])
        if status is not None:
            return twilio_error(status, STATUS_CODES.get(status, status), STATUS_MESSAGES.get(status, "Error"),
                                peer.retry_after_headers())
        if not authorized(request, tokens):
            return twilio_error(401, 20003, "Authenticate")
        form = await request.post()
        problem = form_problem(form, peer)
        if problem is not None:
            return twilio_error(400, problem, MESSAGES[problem])
        sid = request.match_info["sid"]
        token = request.headers.get(IDEMPOTENCY_HEADER)
        key = f"{sid}/{token}" if token else None
        message = answers.get(key) if key else None
        new = message is None
        if message is None:
            message = message_resource(sid, form)
            if key:
                answers[key] = message
        peer.record({"account_sid": sid, "to": message["to"], "from": message["from"],
                     "messaging_service_sid": message["messaging_service_sid"], "body": message["body"],
                     "sid": message["sid"], "num_segments": int(message["num_segments"]),
                     "encoding": segments(message["body"]).encoding, "idempotency_token": token},
                    key=key, notification_id=token)
        callback = form.get("StatusCallback")
        if new and callback:
            task = asyncio.create_task(post_callbacks(str(callback), message, tokens[sid], peer))
            callbacks.add(task)
            task.add_done_callback(callbacks.discard)
        return web.json_response(message, status=201)

    return [web.post(API + "/Accounts/{sid}/Messages.json", create_message)]
