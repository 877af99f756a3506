"""gateway/server.py: request parsing, the ids the gateway answers with, and Kafka keys.

The ids are the contract between the gateway and ingest: the gateway answers 202 with the ids
before ingest has read the request, so `ids_of` must equal what `expand` stamps for the same
request at the same log position.
"""

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.server import Gateway, ids_of, kafka_key, parse
from agents.ingest import expand
from schemas.models import NotificationBatch, NotificationRequest
from schemas.serde import default_serde
from streams.codec import Envelope
from streams.ids import log_position
from streams.settings import Settings

POSITION = log_position("herald.requests", 2, 314)
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)

REQUEST = {"template_id": "welcome", "recipient": {"user_id": "user-1", "email": "alice@example.com"},
           "variables": {"name": "Alice"}}
BATCH = {"template_id": "welcome", "batch_id": "b-1",
         "recipients": [{"recipient": {"user_id": f"user-{i}"}} for i in range(4)]}


def body(value: dict) -> bytes:
    return json.dumps(value).encode()


def errors(response: web.Response) -> list[dict[str, str]]:
    assert response.status == 422
    payload = json.loads(response.text)
    assert payload["error"] == "invalid_request"
    return payload["detail"]


def as_ingest_sees_it(model: NotificationRequest | NotificationBatch) -> Envelope:
    """The request after the gateway encoded it and ingest decoded it from herald.requests."""
    serde = default_serde()
    schema, record = serde.decode_any(serde.encode(model.AVRO_NAME, model.to_avro()),
                                      ("NotificationRequest", "NotificationBatch"))
    return Envelope(schema, record)


# --- parse -----------------------------------------------------------------------------------------------


def test_parse_valid_request() -> None:
    parsed = parse(NotificationRequest, body(REQUEST))
    assert isinstance(parsed, NotificationRequest)
    assert parsed.recipient.user_id == "user-1"
    assert parsed.tenant == "default"


def test_parse_missing_nested_field_names_its_path() -> None:
    response = parse(NotificationRequest, body({"template_id": "welcome", "recipient": {"email": "a@example.com"}}))
    assert isinstance(response, web.Response)
    assert [e["field"] for e in errors(response)] == ["recipient.user_id"]


def test_parse_reports_every_bad_field() -> None:
    bad = {"recipient": {"user_id": 5}, "channels": ["email", "fax"], "priority": "urgent"}
    fields = {e["field"] for e in errors(parse(NotificationRequest, body(bad)))}
    assert fields == {"template_id", "recipient.user_id", "channels.1", "priority"}


def test_parse_refuses_unknown_fields() -> None:
    fields = [e["field"] for e in errors(parse(NotificationRequest, body(REQUEST | {"colour": "red"})))]
    assert fields == ["colour"]


def test_parse_batch_member_field_path() -> None:
    bad = BATCH | {"recipients": [{"recipient": {"user_id": "u"}}, {"recipient": {}}]}
    fields = [e["field"] for e in errors(parse(NotificationBatch, body(bad)))]
    assert fields == ["recipients.1.recipient.user_id"]


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b"null"])
def test_parse_non_object_body(raw: bytes) -> None:
    detail = errors(parse(NotificationRequest, raw))
    assert detail and all(e["message"] for e in detail)
    assert detail[0]["field"] == "(body)"


def test_parse_template_version_out_of_avro_int_range() -> None:
    fields = [e["field"] for e in errors(parse(NotificationRequest, body(REQUEST | {"template_version": 2**31})))]
    assert fields == ["template_version"]


# --- ids_of: the contract with ingest ----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"idempotency_key": "order-1"}, {"tenant": "globex"},
                                   {"tenant": "globex", "idempotency_key": "order-1"}])
def test_request_ids_match_ingest(extra: dict) -> None:
    request = NotificationRequest.model_validate(REQUEST | extra)
    expanded = expand(as_ingest_sees_it(request), POSITION, NOW)
    assert ids_of(request, POSITION) == [n["notification_id"] for n in expanded]


@pytest.mark.parametrize("extra", [
    {},
    {"idempotency_key": "campaign-1"},
    {"tenant": "globex", "idempotency_key": "campaign-1"},
    {"idempotency_key": "campaign-1",
     "recipients": [{"recipient": {"user_id": "a"}, "idempotency_key": "own-a"}, {"recipient": {"user_id": "b"}},
                    {"recipient": {"user_id": "c"}, "idempotency_key": "own-c"}]},
    {"recipients": [{"recipient": {"user_id": "a"}, "idempotency_key": "own-a"}, {"recipient": {"user_id": "b"}}]},
])
def test_batch_ids_match_ingest(extra: dict) -> None:
    batch = NotificationBatch.model_validate(BATCH | extra)
    expanded = expand(as_ingest_sees_it(batch), POSITION, NOW)
    ids = ids_of(batch, POSITION)
    assert ids == [n["notification_id"] for n in expanded]
    assert len(set(ids)) == len(batch.recipients)


def test_ids_depend_on_the_position_without_a_key() -> None:
    request = NotificationRequest.model_validate(REQUEST)
    assert ids_of(request, POSITION) != ids_of(request, log_position("herald.requests", 2, 315))
    assert all(isinstance(i, uuid.UUID) for i in ids_of(request, POSITION))


def test_ids_do_not_depend_on_the_position_with_a_key() -> None:
    batch = NotificationBatch.model_validate(BATCH | {"idempotency_key": "k"})
    assert ids_of(batch, POSITION) == ids_of(batch, log_position("herald.requests", 0, 1))


# --- kafka_key -------------------------------------------------------------------------------------------


def test_kafka_key_is_the_idempotency_key() -> None:
    assert kafka_key(NotificationRequest.model_validate(REQUEST | {"idempotency_key": "order-1"})) == b"order-1"
    assert kafka_key(NotificationBatch.model_validate(BATCH | {"idempotency_key": "camp-1"})) == b"camp-1"


def test_kafka_key_of_a_request_without_key_is_the_recipient() -> None:
    assert kafka_key(NotificationRequest.model_validate(REQUEST)) == b"user-1"


def test_kafka_key_of_a_batch_without_key_is_the_batch_id() -> None:
    assert kafka_key(NotificationBatch.model_validate(BATCH)) == b"b-1"


def test_kafka_key_of_an_anonymous_batch_is_random() -> None:
    batch = NotificationBatch.model_validate(BATCH | {"batch_id": None})
    first, second = kafka_key(batch), kafka_key(batch)
    assert first != second
    assert uuid.UUID(first.decode())


# --- the web app, without its Kafka producer -------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = Gateway(Settings(api_key="secret")).web_app()
    app.on_startup.clear()  # the Kafka producer; nothing below reaches a produce call
    app.on_cleanup.clear()
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_health_needs_no_key(client: TestClient) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_metrics_need_no_key(client: TestClient) -> None:
    response = await client.get("/metrics")
    assert response.status == 200
    assert "herald_gateway_refused_total" in await response.text()


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}])
async def test_notifications_need_the_key(client: TestClient, headers: dict) -> None:
    response = await client.post("/v1/notifications", data=body(REQUEST), headers=headers)
    assert response.status == 401
    assert (await response.json())["error"] == "unauthorized"


@pytest.mark.parametrize("headers", [{"X-API-Key": "secret"}, {"Authorization": "Bearer secret"}])
async def test_bad_body_with_the_key_is_422(client: TestClient, headers: dict) -> None:
    response = await client.post("/v1/notifications", data=body({"template_id": "t", "recipient": {}}),
                                 headers=headers)
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["detail"]] == ["recipient.user_id"]


async def test_empty_batch_is_422(client: TestClient) -> None:
    response = await client.post("/v1/notifications/batch", data=body(BATCH | {"recipients": []}),
                                 headers={"X-API-Key": "secret"})
    assert response.status == 422
    assert (await response.json())["detail"] == [{"field": "recipients", "message": "at least one recipient"}]


async def test_status_of_a_non_uuid_is_422(client: TestClient) -> None:
    response = await client.get("/v1/notifications/not-a-uuid", headers={"X-API-Key": "secret"})
    assert response.status == 422
    assert (await response.json())["error"] == "invalid_id"


def test_gateway_refuses_to_run_without_an_api_key() -> None:
    with pytest.raises(ValueError, match="HERALD_API_KEY"):
        Gateway(Settings(api_key=""))


async def test_an_empty_authorization_header_is_not_the_key(client: TestClient) -> None:
    response = await client.post("/v1/notifications", data=body(REQUEST), headers={"Authorization": ""})
    assert response.status == 401


# --- the size limit and a broker that does not answer, with a stand-in producer ---------------------------


class StandInProducer:
    """Answers like aiokafka's producer: record metadata, or the error it was given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> object:
        if self.error is not None:
            raise self.error
        self.sent.append(value)
        return type("RecordMetadata", (), {"topic": topic, "partition": 0, "offset": len(self.sent)})()


async def gateway_with(producer: StandInProducer, **settings: object) -> TestClient:
    gateway = Gateway(Settings(api_key="secret", **settings))
    app = gateway.web_app()
    app.on_startup.clear()
    app.on_cleanup.clear()
    gateway.producer = producer  # type: ignore[assignment]
    return TestClient(TestServer(app))


async def test_a_request_over_the_size_limit_is_413_and_not_produced() -> None:
    producer = StandInProducer()
    async with await gateway_with(producer, max_message_bytes=20_000) as client:
        big = REQUEST | {"variables": {"name": "x" * 25_000}}
        response = await client.post("/v1/notifications", data=body(big), headers={"X-API-Key": "secret"})
        assert response.status == 413
        assert (await response.json())["error"] == "too_large"
        ok = await client.post("/v1/notifications", data=body(REQUEST), headers={"X-API-Key": "secret"})
        assert ok.status == 202
    assert len(producer.sent) == 1


async def test_a_broker_that_does_not_answer_is_503_never_202() -> None:
    from aiokafka.errors import KafkaTimeoutError

    async with await gateway_with(StandInProducer(KafkaTimeoutError())) as client:
        for path, payload in (("/v1/notifications", REQUEST), ("/v1/notifications/batch", BATCH)):
            response = await client.post(path, data=body(payload), headers={"X-API-Key": "secret"})
            assert response.status == 503
            assert (await response.json())["error"] == "unavailable"
