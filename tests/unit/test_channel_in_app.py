"""agents/channels/in_app.py: the user id as an address, and the adapter that appends to herald.inbox.

The adapter's producer is a stand-in answering like aiokafka's (no broker in unit tests); the record
it is given is decoded with the real serde. tests/integration covers a real broker.
"""

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from agents.channels import CHANNELS
from agents.channels.base import Result
from agents.channels.in_app import MAX_MESSAGE_BYTES, InboxAdapter, user_id
from streams.codec import default_serde
from streams.settings import Settings
from tests.unit import records


class StandInProducer:
    def __init__(self, error: Exception | None = None, delay_s: float = 0.0) -> None:
        self.error = error
        self.delay_s = delay_s
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.stopped = False

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        await asyncio.sleep(self.delay_s)
        if self.error:
            raise self.error
        self.sent.append((topic, key, value))

    async def stop(self) -> None:
        self.stopped = True


def adapter_with(producer: StandInProducer, **inbox: Any) -> InboxAdapter:
    adapter = InboxAdapter(Settings(inbox=inbox))
    adapter.kafka.producer = producer  # type: ignore[assignment]
    return adapter


def in_app_task(**overrides: Any) -> dict[str, Any]:
    return records.delivery_task(**{"channel": "in_app", "address": " user-1 ", "recipient": records.recipient(),
                                    "content": records.content("in_app", html=None, data={"link": "/orders/7"}),
                                    **overrides})


@pytest.mark.parametrize(("raw", "expected"), [("user-1", "user-1"), ("  ü-42 ", "ü-42"), ("x" * 256, "x" * 256)])
def test_a_user_id_is_an_address(raw: str, expected: str) -> None:
    assert user_id(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "x" * 257, "user\n1", "user\x00", "us\x85er"])
def test_not_a_user_id(raw: str) -> None:
    with pytest.raises(ValueError):
        user_id(raw)


def test_the_channel_is_registered_and_addresses_the_user() -> None:
    channel = CHANNELS["in_app"]
    assert channel.addresses(records.recipient(user_id="u-9"), None) == ["u-9"]
    assert (channel.invalid_reason, channel.adapter) == ("invalid_user_id", InboxAdapter)


async def test_send_appends_a_message_event_keyed_by_tenant_and_user() -> None:
    producer = StandInProducer()
    outcome = await adapter_with(producer).send(in_app_task())
    assert outcome.result is Result.SENT
    [(topic, key, value)] = producer.sent
    assert (topic, key) == ("herald.inbox", b"acme/user-1")
    event = default_serde().decode(value, "InboxEvent")
    assert event | {"occurred_at": None} == {
        "event_id": uuid.uuid5(records.NOTIFICATION_ID, "inbox/acme/user-1"), "kind": "message", "tenant": "acme",
        "user_id": "user-1", "notification_id": records.NOTIFICATION_ID, "subject": "Hello Alice",
        "text": "Hi Alice", "data": {"link": "/orders/7"}, "category": "transactional", "template_id": "welcome",
        "occurred_at": None,
    }


async def test_a_resend_has_the_same_event_id() -> None:
    producer = StandInProducer()
    adapter = adapter_with(producer)
    await adapter.send(in_app_task())
    await adapter.send(in_app_task(attempt=1))
    first, second = (default_serde().decode(value, "InboxEvent")["event_id"] for _, _, value in producer.sent)
    assert first == second


@pytest.mark.parametrize(("task", "code"), [
    (in_app_task(address="bad\nid"), "invalid_address"),
    (in_app_task(content=records.content("in_app", text="x" * MAX_MESSAGE_BYTES)), "too_large"),
])
async def test_what_can_never_be_appended_is_permanent(task: dict[str, Any], code: str) -> None:
    producer = StandInProducer()
    outcome = await adapter_with(producer).send(task)
    assert (outcome.result, outcome.code) == (Result.PERMANENT, code)
    assert producer.sent == []


@pytest.mark.parametrize("producer", [StandInProducer(KafkaConnectionError("away")), StandInProducer(delay_s=1)],
                         ids=["kafka-error", "no-answer"])
async def test_kafka_trouble_is_transient_and_the_producer_is_made_anew(producer: StandInProducer) -> None:
    adapter = adapter_with(producer, produce_timeout_s=0.05)
    outcome = await adapter.send(in_app_task())
    assert (outcome.result, outcome.code) == (Result.TRANSIENT, "kafka_unavailable")
    assert producer.stopped and adapter.kafka.producer is None


async def test_a_producer_that_does_not_start_is_transient() -> None:
    adapter = adapter_with(StandInProducer())
    adapter.kafka.producer = None

    async def away() -> None:
        raise KafkaTimeoutError()

    adapter.kafka.get = away  # type: ignore[method-assign]  # what RenewingProducer.get raises while Kafka is away
    assert (await adapter.send(in_app_task())).result is Result.TRANSIENT
