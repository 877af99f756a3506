"""SMS status callbacks on the gateway: Twilio's signature checked, final statuses become events."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from twilio.request_validator import RequestValidator

from gateway.callbacks import callback_routes
from streams.settings import Settings

SETTINGS = Settings(public_url="https://notify.example.com")
TOKEN = SETTINGS.sms.twilio.auth_token.get_secret_value()
NID = uuid.UUID(int=42)
PATH = f"/v1/providers/twilio/status?notification_id={NID}&tenant=acme"


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[TestClient, list[dict[str, Any]], list[dict[str, Any]]]]:
    published: list[dict[str, Any]] = []
    receipts: list[dict[str, Any]] = []

    async def publish(event: dict[str, Any]) -> None:
        published.append(event)

    async def publish_receipt(receipt: dict[str, Any]) -> None:
        receipts.append(receipt)

    app = web.Application()
    app.add_routes(callback_routes(SETTINGS, publish, publish_receipt))
    async with TestClient(TestServer(app)) as client:
        yield client, published, receipts


async def post(client: TestClient, form: dict[str, str], token: str = TOKEN, path: str = PATH) -> int:
    signature = RequestValidator(token).compute_signature(f"https://notify.example.com{path}", form)
    response = await client.post(path, data=form, headers={"X-Twilio-Signature": signature})
    return response.status


async def test_delivered_becomes_an_event(gateway: tuple[TestClient, list, list]) -> None:
    client, published, receipts = gateway
    assert await post(client, {"MessageSid": "SM1", "MessageStatus": "delivered"}) == 204
    [event] = published
    assert (event["notification_id"], event["tenant"], event["status"], event["channel"]) == (NID, "acme", "delivered", "sms")
    [receipt] = receipts  # for deliver's fallback watch
    assert (receipt["notification_id"], receipt["channel"], receipt["status"]) == (NID, "sms", "delivered")


async def test_undelivered_is_failed_with_the_code(gateway: tuple[TestClient, list, list]) -> None:
    client, published, receipts = gateway
    assert await post(client, {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"}) == 204
    assert [(e["status"], e["error_code"]) for e in published] == [("failed", "twilio_30003")]
    assert [(r["status"], r["error_code"]) for r in receipts] == [("failed", "twilio_30003")]


async def test_steps_before_the_end_are_dropped(gateway: tuple[TestClient, list, list]) -> None:
    client, published, receipts = gateway
    assert await post(client, {"MessageSid": "SM1", "MessageStatus": "sent"}) == 204
    assert published == [] and receipts == []


async def test_a_forged_callback_is_refused(gateway: tuple[TestClient, list, list]) -> None:
    client, published, receipts = gateway
    assert await post(client, {"MessageSid": "SM1", "MessageStatus": "delivered"}, token="guessed") == 403
    other = f"/v1/providers/twilio/status?notification_id={uuid.UUID(int=7)}&tenant=acme"
    signature = RequestValidator(TOKEN).compute_signature(f"https://notify.example.com{PATH}", {"MessageStatus": "delivered"})
    moved = await client.post(other, data={"MessageStatus": "delivered"}, headers={"X-Twilio-Signature": signature})
    assert moved.status == 403  # a signature for one notification does not move to another
    assert published == []
