"""What providers tell Herald back, as lifecycle events: SMS status callbacks.

POST /v1/providers/twilio/status?notification_id=…&tenant=…
    Twilio's status callback (form-encoded MessageStatus, ErrorCode, …), signed with X-Twilio-Signature
    over the URL it was posted to and its form. The adapter put the notification's id and tenant in
    that URL (agents/channels/sms.py, callback_url), so they are signed too. A final status becomes a
    `delivered` or `failed` lifecycle event, and a DeliveryReceipt on herald.receipts (for deliver's
    fallback watch); the steps before it (queued, sent) are acknowledged and dropped. A callback whose signature no configured account's token verifies is 403.

No API key: the signature is the proof. The URL Twilio signed is the public one it was given
(`public_url`), not the one this process sees behind a proxy.
"""

import asyncio
import uuid
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict

from agents.channels.sms import STATUS_CALLBACK_PATH, delivery_report, verify_status_callback
from gateway.errors import invalid, problem
from gateway.openapi import Inputs, Operation, Reply, endpoint, error
from gateway.tracking import Publish
from streams.settings import Settings
from streams.stage import now_utc


def twilio_tokens(settings: Settings) -> list[str]:
    accounts = [settings.sms.twilio, *([settings.sms.secondary] if settings.sms.secondary else [])]
    return [account.auth_token.get_secret_value() for account in accounts]


def report_event(notification_id: uuid.UUID, tenant: str, status: str, error_code: str | None,
                 params: dict[str, str]) -> dict[str, Any]:
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    return {
        # A provider may post the same callback again: one event per message and status.
        "event_id": uuid.uuid5(notification_id, f"provider/{status}/sms/{sid}"),
        "notification_id": notification_id, "tenant": tenant, "status": status, "stage": "gateway",
        "channel": "sms", "provider": "twilio", "template_id": None, "category": None, "priority": "normal",
        "attempt": 0, "error_code": error_code, "detail": f"sid {sid}" if sid else None, "latency_ms": None,
        "occurred_at": now_utc(),
    }


def receipt(notification_id: uuid.UUID, tenant: str, status: str, error_code: str | None) -> dict[str, Any]:
    """The DeliveryReceipt deliver's fallback watch reads (agents/deliver.py, check_receipt)."""
    return {"notification_id": notification_id, "tenant": tenant, "channel": "sms", "status": status,
            "provider": "twilio", "error_code": error_code, "received_at": now_utc()}


class TwilioStatusQuery(BaseModel):
    notification_id: str = ""
    """The notification's id (a UUID), which the SMS adapter put in the callback URL; checked after the signature."""
    tenant: str = "default"


class TwilioStatusForm(BaseModel):
    """The fields of Twilio's status callback Herald reads; Twilio sends more, and they are signed too."""

    model_config = ConfigDict(extra="allow")

    MessageStatus: str | None = None
    ErrorCode: str | None = None
    MessageSid: str | None = None


TWILIO_STATUS = Operation(
    "Twilio's SMS status callback (signed with X-Twilio-Signature)",
    {204: Reply("taken: a final status became a lifecycle event and a DeliveryReceipt"),
     403: error("X-Twilio-Signature does not verify"),
     503: error("Kafka did not take the receipt; the provider posts again"),
     422: error("notification_id is not a UUID, or the body is not a form")},
    query=TwilioStatusQuery, form=TwilioStatusForm, security=(), tags=("providers",))


def callback_routes(settings: Settings, publish: Publish, publish_receipt: Publish) -> list[web.RouteDef]:
    async def twilio_status(request: web.Request, inputs: Inputs) -> web.Response:
        try:
            params = {key: str(value) for key, value in (await request.post()).items()}
        except ValueError as exc:  # a multipart body without its boundary, and the like
            return invalid([problem("(body)", f"not a form: {exc}")])
        url = settings.public_url.rstrip("/") + request.path_qs
        signature = request.headers.get("X-Twilio-Signature")
        if not any(verify_status_callback(url, params, signature, token) for token in twilio_tokens(settings)):
            return web.json_response({"error": "forbidden", "detail": "X-Twilio-Signature does not verify"}, status=403)
        try:
            notification_id = uuid.UUID(request.query.get("notification_id", ""))
        except ValueError:
            return invalid([problem("notification_id", "must be a UUID")])
        report = delivery_report(params)
        if report is not None:
            tenant = request.query.get("tenant") or "default"
            try:
                await publish_receipt(receipt(notification_id, tenant, report.status, report.error_code))
            except (KafkaError, asyncio.TimeoutError) as exc:  # Kafka away: the provider may post again
                return web.json_response({"error": "unavailable", "detail": type(exc).__name__}, status=503)
            await publish(report_event(notification_id, tenant, report.status, report.error_code, params))
        return web.Response(status=204)

    return [web.post(STATUS_CALLBACK_PATH, endpoint(TWILIO_STATUS, twilio_status))]
