"""gateway/server.py: request parsing, the ids the gateway answers with, and Kafka keys.

The ids are the contract between the gateway and ingest: the gateway answers 202 with the ids
before ingest has read the request, so `ids_of` must equal what `expand` stamps for the same
request at the same log position.
"""

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timezone

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.auth import API_KEYS, new_key
from gateway.server import Gateway, GatewayRequest, ids_of, kafka_key, parse
from agents.ingest import expand
from schemas.models import BatchRecipient, NotificationBatch, NotificationRequest, Recipient
from streams.codec import default_serde
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


def errors_of(payload: dict) -> list[dict[str, str]]:
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


async def test_metrics_are_off_by_default(client: TestClient) -> None:
    for headers in ({}, {"X-API-Key": "secret"}):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 403
        assert (await response.json())["error"] == "metrics_disabled"


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
    assert [e["field"] for e in errors_of(await response.json())] == ["id"]


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

    async def stop(self) -> None:
        self.stopped = True


async def gateway_with(producer: StandInProducer, **settings: object) -> TestClient:
    return client_of(Gateway(Settings(api_key="secret", **settings)), producer)


def key_of(client: TestClient, tenant: str) -> dict[str, str]:
    """Headers with a new key of `tenant`, folded into the gateway's keys as if read from herald.tenants."""
    keys = client.server.app[API_KEYS]
    key, record = new_key(tenant, datetime.now(UTC))
    keys.fold(record.to_avro())
    keys.ready.set()
    return {"X-API-Key": key}


def client_of(gateway: Gateway, producer: StandInProducer) -> TestClient:
    app = gateway.web_app()
    app.on_startup.clear()
    app.on_cleanup.clear()
    gateway.kafka.producer = producer  # type: ignore[assignment]
    return TestClient(TestServer(app))


async def test_a_request_over_the_size_limit_is_413_and_not_produced() -> None:
    producer = StandInProducer()
    async with await gateway_with(producer, max_message_bytes=20_000) as client:
        big = REQUEST | {"variables": {"name": "x" * 15_000, "more": "y" * 15_000}}  # each within its own limit
        response = await client.post("/v1/notifications", data=body(big), headers={"X-API-Key": "secret"})
        assert response.status == 413
        assert (await response.json())["error"] == "too_large"
        ok = await client.post("/v1/notifications", data=body(REQUEST), headers={"X-API-Key": "secret"})
        assert ok.status == 202
    assert len(producer.sent) == 1


async def test_a_broker_that_does_not_answer_is_503_never_202_and_the_producer_is_made_anew() -> None:
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    failing = StandInProducer(KafkaTimeoutError())
    gateway = Gateway(Settings(api_key="secret"))
    fresh: list[StandInProducer] = []

    async def get() -> StandInProducer:  # what RenewingProducer.get does, without a broker
        if gateway.kafka.producer is None:
            if not fresh:
                raise KafkaConnectionError("Kafka is still away")
            gateway.kafka.producer = fresh.pop()  # type: ignore[assignment]
        return gateway.kafka.producer  # type: ignore[return-value]

    gateway.kafka.get = get  # type: ignore[method-assign]
    async with client_of(gateway, failing) as client:
        for path, payload in (("/v1/notifications", REQUEST), ("/v1/notifications/batch", BATCH)):
            response = await client.post(path, data=body(payload), headers={"X-API-Key": "secret"})
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["error"] == "unavailable"
        assert getattr(failing, "stopped", False), "the failed producer was not dropped"
        fresh.append(working := StandInProducer())
        response = await client.post("/v1/notifications", data=body(REQUEST), headers={"X-API-Key": "secret"})
        assert response.status == 202
        assert len(working.sent) == 1


# --- limits on what a request may hold --------------------------------------------------------------------

KEY = {"X-API-Key": "secret"}
SINGLE, MANY = "/v1/notifications", "/v1/notifications/batch"


async def refused(client: TestClient, path: str, payload: dict | bytes, status: int = 422) -> list[dict[str, str]]:
    response = await client.post(path, data=payload if isinstance(payload, bytes) else body(payload), headers=KEY)
    assert response.status == status, await response.text()
    return (await response.json())["detail"]


async def accepted(client: TestClient, path: str, payload: dict, headers: dict[str, str] = KEY) -> None:
    response = await client.post(path, data=body(payload), headers=headers)
    assert response.status == 202, await response.text()


def with_recipient(**fields: object) -> dict:
    return REQUEST | {"recipient": REQUEST["recipient"] | fields}


def with_member(**fields: object) -> dict:
    member = {"recipient": {"user_id": "m"}} | fields
    return BATCH | {"recipients": [member, *BATCH["recipients"]]}


def with_member_recipient(**fields: object) -> dict:
    return with_member(recipient={"user_id": "m"} | fields)


# (name, path, payload of a value, the value at the limit, the value just over it, the field refused)
LENGTH_LIMITS = [
    ("tenant", SINGLE, lambda v: REQUEST | {"tenant": v}, "t" * 128, "t" * 129, "tenant"),
    ("request idempotency_key", SINGLE, lambda v: REQUEST | {"idempotency_key": v}, "k" * 256, "k" * 257,
     "idempotency_key"),
    ("template_id", SINGLE, lambda v: REQUEST | {"template_id": v}, "w" * 256, "w" * 257, "template_id"),
    ("category", SINGLE, lambda v: REQUEST | {"category": v}, "c" * 128, "c" * 129, "category"),
    ("user_id", SINGLE, lambda v: with_recipient(user_id=v), "u" * 256, "u" * 257, "recipient.user_id"),
    ("user_id in code points", SINGLE, lambda v: with_recipient(user_id=v), "😀" * 256, "😀" * 257,
     "recipient.user_id"),
    ("email", SINGLE, lambda v: with_recipient(email=v), "e" * 300 + "@example.com"[:20], "e" * 321,
     "recipient.email"),
    ("phone", SINGLE, lambda v: with_recipient(phone=v), "+" + "3" * 31, "+" + "3" * 32, "recipient.phone"),
    ("locale", SINGLE, lambda v: with_recipient(locale=v), "l" * 35, "l" * 36, "recipient.locale"),
    ("time_zone", SINGLE, lambda v: with_recipient(time_zone=v), "z" * 64, "z" * 65, "recipient.time_zone"),
    ("push token", SINGLE, lambda v: with_recipient(push_tokens=[v]), "p" * 4096, "p" * 4097,
     "recipient.push_tokens.0"),
    ("metadata value", SINGLE, lambda v: REQUEST | {"metadata": {"source": v}}, "m" * 1024, "m" * 1025,
     "metadata.source"),
    ("metadata key", SINGLE, lambda v: REQUEST | {"metadata": {v: "x"}}, "m" * 128, "n" * 129,
     "metadata." + "n" * 64 + "….[key]"),
    ("variable name", SINGLE, lambda v: REQUEST | {"variables": {v: "x"}}, "v" * 128, "w" * 129,
     "variables." + "w" * 64 + "….[key]"),
    ("variable value in UTF-8 bytes", SINGLE, lambda v: REQUEST | {"variables": {"name": v}}, "é" * 8192,
     "é" * 8192 + "x", "variables.name"),
    ("batch_id", MANY, lambda v: BATCH | {"batch_id": v}, "b" * 256, "b" * 257, "batch_id"),
    ("batch idempotency_key", MANY, lambda v: BATCH | {"idempotency_key": v}, "k" * 252, "k" * 257,
     "idempotency_key"),
    ("batch tenant", MANY, lambda v: BATCH | {"tenant": v}, "t" * 128, "t" * 129, "tenant"),
    ("member idempotency_key", MANY, lambda v: with_member(idempotency_key=v), "k" * 256, "k" * 257,
     "recipients.0.idempotency_key"),
    ("member user_id", MANY, lambda v: with_member_recipient(user_id=v), "u" * 256, "u" * 257,
     "recipients.0.recipient.user_id"),
    ("member email", MANY, lambda v: with_member_recipient(email=v), "e" * 320, "e" * 321,
     "recipients.0.recipient.email"),
    ("member variable value", MANY, lambda v: with_member(variables={"name": v}), "x" * 16384, "x" * 16385,
     "recipients.0.variables.name"),
    ("batch variable value", MANY, lambda v: BATCH | {"variables": {"name": v}}, "x" * 16384, "x" * 16385,
     "variables.name"),
]


@pytest.mark.parametrize(("path", "payload", "at_limit", "over", "field"),
                         [case[1:] for case in LENGTH_LIMITS], ids=[case[0] for case in LENGTH_LIMITS])
async def test_each_string_is_accepted_at_its_limit_and_refused_past_it(path, payload, at_limit, over, field) -> None:
    producer = StandInProducer()
    async with await gateway_with(producer) as client:
        # A body may name only its key's tenant: the longest tenant name needs a key of its own.
        await accepted(client, path, payload(at_limit), key_of(client, at_limit) if field == "tenant" else KEY)
        detail = await refused(client, path, payload(over))
    assert [e["field"] for e in detail] == [field]
    assert detail[0]["message"]
    assert len(producer.sent) == 1


async def test_a_field_not_honoured_yet_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """gateway/writes.py NOT_HONOURED, as it was before quiet hours read the recipient's time zone."""
    from gateway import writes
    from schemas.models import Recipient

    monkeypatch.setattr(writes, "NOT_HONOURED", {Recipient: ("time_zone",)})
    producer = StandInProducer()
    async with await gateway_with(producer) as client:
        single = await refused(client, SINGLE, with_recipient(time_zone="Asia/Tokyo"))
        batch = await refused(client, MANY, with_member_recipient(time_zone="Asia/Tokyo"))
        await accepted(client, SINGLE, with_recipient(time_zone=None))
    assert [e["field"] for e in single] == ["recipient.time_zone"]
    assert [e["field"] for e in batch] == ["recipients.0.recipient.time_zone"]
    assert "not honoured" in single[0]["message"]
    assert len(producer.sent) == 1


# (name, path, payload of n, n at the limit, the field refused)
COUNT_LIMITS = [
    ("variables", SINGLE, lambda n: REQUEST | {"variables": {f"v{i}": "x" for i in range(n)}}, 200, "variables"),
    ("member variables", MANY, lambda n: with_member(variables={f"v{i}": "x" for i in range(n)}), 200,
     "recipients.0.variables"),
    ("metadata entries", SINGLE, lambda n: REQUEST | {"metadata": {f"m{i}": "x" for i in range(n)}}, 64, "metadata"),
    ("push tokens", SINGLE, lambda n: with_recipient(push_tokens=[f"t{i}" for i in range(n)]), 16,
     "recipient.push_tokens"),
    ("channels", SINGLE, lambda n: REQUEST | {"channels": ["email"] * n}, 5, "channels"),
    ("variables' total bytes", SINGLE, lambda n: REQUEST | {"variables": {f"v{i}": "x" * 16384 for i in range(n)}},
     8, "variables"),
]


@pytest.mark.parametrize(("path", "payload", "most", "field"), [case[1:] for case in COUNT_LIMITS],
                         ids=[case[0] for case in COUNT_LIMITS])
async def test_each_count_is_accepted_at_its_limit_and_refused_past_it(path, payload, most, field) -> None:
    async with await gateway_with(StandInProducer()) as client:
        await accepted(client, path, payload(most))
        detail = await refused(client, path, payload(most + 1))
    assert [e["field"] for e in detail] == [field]


def test_the_variable_limits_are_the_validate_stage_s() -> None:
    from agents import validate
    from gateway import server

    assert (server.MAX_VARIABLE_BYTES, server.MAX_VARIABLES, server.MAX_TOTAL_BYTES) == \
        (validate.MAX_VARIABLE_BYTES, validate.MAX_VARIABLES, validate.MAX_TOTAL_BYTES)


async def test_recipients_per_batch_default_limit() -> None:
    producer = StandInProducer()
    members = [{"recipient": {"user_id": f"u{i}"}} for i in range(10_001)]
    async with await gateway_with(producer) as client:
        response = await client.post(MANY, data=body(BATCH | {"recipients": members[:10_000]}), headers=KEY)
        assert response.status == 202
        assert len((await response.json())["notification_ids"]) == 10_000
        detail = await refused(client, MANY, BATCH | {"recipients": members})
    assert [e["field"] for e in detail] == ["recipients"]
    assert "10000" in detail[0]["message"]
    assert len(producer.sent) == 1


async def test_recipients_per_batch_is_a_setting() -> None:
    async with await gateway_with(StandInProducer(), gateway_max_batch_recipients=4) as client:
        await accepted(client, MANY, BATCH)  # four recipients
        detail = await refused(client, MANY, with_member())
    assert [e["field"] for e in detail] == ["recipients"]


@pytest.mark.parametrize(("payload", "field"), [
    (with_recipient(user_id="a\x00b"), "recipient.user_id"),
    (REQUEST | {"tenant": "acme\r\nX-Injected: yes"}, "tenant"),
    (REQUEST | {"idempotency_key": "order\x851"}, "idempotency_key"),  # C1 control (NEL)
    (REQUEST | {"template_id": "welcome\t"}, "template_id"),
    (REQUEST | {"variables": {"na\x00me": "x"}}, "variables.na\x00me.[key]"),
    (REQUEST | {"variables": {"name": "Al\x00ice"}}, "variables.name"),
    (REQUEST | {"metadata": {"source": "\x00"}}, "metadata.source"),
])
async def test_control_characters_in_identifiers_and_nul_anywhere_are_refused(payload: dict, field: str) -> None:
    async with await gateway_with(StandInProducer()) as client:
        detail = await refused(client, SINGLE, payload)
    assert [e["field"] for e in detail] == [field]


async def test_odd_but_valid_unicode_is_accepted_and_kept() -> None:
    odd = {"idempotency_key": "clé-🔑", "template_id": "welcome",
           "recipient": {"user_id": "👩‍👩‍👧‍👦", "locale": "pt-BR"},
           "variables": {"name": "e\u0301\u202eevil\u202c \u200b\ufeff", "multi": "line one\nline two\ttab"},
           "metadata": {"עברית": "مرحبا"}}
    producer = StandInProducer()
    async with await gateway_with(producer) as client:
        await accepted(client, SINGLE, odd)
    [value] = producer.sent
    decoded = default_serde().decode(value, "NotificationRequest")
    assert (decoded["recipient"]["user_id"], decoded["variables"], decoded["metadata"]) == \
        (odd["recipient"]["user_id"], odd["variables"], odd["metadata"])


def test_gateway_models_keep_the_avro_models_fields_and_defaults() -> None:
    from gateway.server import GatewayBatchRecipient, GatewayRecipient, GatewayRequest, batch_model

    for gateway_model, model in ((GatewayRequest, NotificationRequest), (batch_model(10), NotificationBatch),
                                 (GatewayRecipient, Recipient), (GatewayBatchRecipient, BatchRecipient)):
        assert issubclass(gateway_model, model)
        assert list(gateway_model.model_fields) == list(model.model_fields)
        for name, field in model.model_fields.items():
            mine = gateway_model.model_fields[name]
            assert mine.is_required() == field.is_required(), name
            if not field.is_required():
                assert mine.get_default(call_default_factory=True) == field.get_default(call_default_factory=True)


async def test_a_problem_list_is_capped() -> None:
    members = [{"recipient": {"user_id": 5}} for _ in range(500)]
    async with await gateway_with(StandInProducer()) as client:
        detail = await refused(client, MANY, BATCH | {"recipients": members})
    assert len(detail) == 51
    assert detail[-1] == {"field": "(more)", "message": "450 more problems not shown"}


# --- duplicate member keys --------------------------------------------------------------------------------


def members(*keys: str | None) -> list[dict]:
    return [{"recipient": {"user_id": f"u{i}"}} | ({"idempotency_key": key} if key is not None else {})
            for i, key in enumerate(keys)]


@pytest.mark.parametrize(("batch", "fields", "words"), [
    ({"recipients": members("a", "dup", "b", "dup", "dup")},
     ["recipients.3.idempotency_key", "recipients.4.idempotency_key"], ["'dup'", "recipients.1"]),
    ({"idempotency_key": "camp", "recipients": members(None, "camp:0")},
     ["recipients.1.idempotency_key"], ["'camp:0'", "recipients.0 (derived from the batch key and index 0)"]),
    ({"idempotency_key": "camp", "recipients": members("camp:1", None)},
     ["recipients.1.idempotency_key"], ["'camp:1'", "recipients.1 (derived", "recipients.0;"]),
], ids=["explicit", "explicit after derived", "derived after explicit"])
async def test_duplicate_member_keys_are_refused_naming_them(batch: dict, fields: list[str], words: list[str]) -> None:
    producer = StandInProducer()
    async with await gateway_with(producer) as client:
        detail = await refused(client, MANY, BATCH | batch)
    assert [e["field"] for e in detail] == fields
    for word in words:
        assert word in detail[0]["message"]
    assert producer.sent == []


@pytest.mark.parametrize("batch", [
    {"idempotency_key": "camp", "recipients": members(None, None, "camp:9", "")},  # "" is no key: camp:3
    {"recipients": members("a", None, None, "b")},  # members without keys never collide
    {"idempotency_key": "camp", "recipients": members("camp", None)},  # the batch key itself is no member's
])
async def test_distinct_member_keys_pass(batch: dict) -> None:
    async with await gateway_with(StandInProducer()) as client:
        await accepted(client, MANY, BATCH | batch)


# --- the API key, the rate limit and /metrics -------------------------------------------------------------


@pytest.mark.parametrize("headers", [{"X-API-Key": "secreT"}, {"X-API-Key": "secre"}, {"X-API-Key": "SECRET"},
                                     {"X-API-Key": "secretsecret"}, {"Authorization": "Basic secret"},
                                     {"X-API-Key": "sécret"}, {"Authorization": "Bearer " + "x" * 4000}])
async def test_near_misses_of_the_key_are_401(client: TestClient, headers: dict) -> None:
    response = await client.post(SINGLE, data=body(REQUEST), headers=headers)
    assert response.status == 401


async def test_the_key_is_compared_in_constant_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    compared: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr("gateway.auth.hmac", type("hmac", (), {"compare_digest": staticmethod(spy)}))
    assert (await client.get("/v1/notifications/x", headers={"X-API-Key": "wrong"})).status == 401
    assert (await client.get("/v1/notifications/x", headers=KEY)).status == 422
    assert compared == [(b"wrong", b"secret"), (b"secret", b"secret")]


async def test_over_the_rate_is_429_with_retry_after() -> None:
    producer = StandInProducer()
    gateway = Gateway(Settings(api_key="secret", gateway_rate_per_s=1, gateway_rate_burst=3))
    now = [1000.0]
    gateway.limiter.clock = lambda: now[0]
    async with client_of(gateway, producer) as client:
        for _ in range(3):
            await accepted(client, SINGLE, REQUEST)
        response = await client.post(SINGLE, data=body(REQUEST), headers=KEY)
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"] == "rate_limited"
        assert (await client.post(SINGLE, data=body(REQUEST), headers={"X-API-Key": "no"})).status == 401
        assert (await client.get("/health")).status == 200  # never limited
        now[0] += 1.0
        await accepted(client, SINGLE, REQUEST)
        assert (await client.post(SINGLE, data=body(REQUEST), headers=KEY)).status == 429
    assert len(producer.sent) == 4


def test_the_token_bucket() -> None:
    from gateway.server import RateLimiter

    now = [0.0]
    limiter = RateLimiter(rate=0.25, burst=2, clock=lambda: now[0])
    assert [limiter.wait("a"), limiter.wait("a")] == [0, 0]
    assert limiter.wait("a") == pytest.approx(4.0)
    assert limiter.wait("b") == 0  # a bucket per key
    now[0] += 2.0
    assert limiter.wait("a") == pytest.approx(2.0)  # half a token saved
    now[0] += 1000.0
    assert [limiter.wait("a"), limiter.wait("a"), limiter.wait("a") > 0] == [0, 0, True]  # at most the burst
    assert RateLimiter(rate=0, burst=0).wait("a") == 0  # a rate of 0 is no limit


async def test_retry_after_is_a_whole_second_at_least() -> None:
    gateway = Gateway(Settings(api_key="secret", gateway_rate_per_s=1000, gateway_rate_burst=1))
    gateway.limiter.clock = lambda: 5.0
    async with client_of(gateway, StandInProducer()) as client:
        await client.get("/v1/notifications/x", headers=KEY)
        response = await client.get("/v1/notifications/x", headers=KEY)
    assert (response.status, response.headers["Retry-After"]) == (429, "1")


@pytest.mark.parametrize(("settings", "headers", "status"), [
    ({"metrics_api_key": "scrape"}, {}, 401),
    ({"metrics_api_key": "scrape"}, KEY, 401),  # the API key is not the metrics key
    ({"metrics_api_key": "scrape"}, {"X-API-Key": "scrape"}, 200),
    ({"metrics_api_key": "scrape"}, {"Authorization": "Bearer scrape"}, 200),
    ({"metrics_api_key": "scrape", "metrics_public": True}, {}, 401),  # a key wins over public
    ({"metrics_public": True}, {}, 200),
    ({}, {}, 403),
    ({}, KEY, 403),
])
async def test_metrics_protection(settings: dict, headers: dict, status: int) -> None:
    async with await gateway_with(StandInProducer(), **settings) as client:
        response = await client.get("/metrics", headers=headers)
        assert response.status == status
        if status == 200:
            assert "herald_gateway_refused_total" in await response.text()
        else:
            assert (await response.json())["detail"]


def test_bad_limit_settings_refuse_to_start() -> None:
    with pytest.raises(ValueError, match="MAX_BATCH_RECIPIENTS"):
        Gateway(Settings(api_key="k", gateway_max_batch_recipients=0))
    with pytest.raises(ValueError, match="RATE_BURST"):
        Gateway(Settings(api_key="k", gateway_rate_per_s=5, gateway_rate_burst=0))


# --- hostile bodies: each a 4xx with a reason, never a 500, and the gateway stays up ----------------------


def nested(depth: int) -> bytes:
    return b'{"template_id": "t", "recipient": {"user_id": "u"}, "metadata": ' + b"[" * depth + b"]" * depth + b"}"


HOSTILE: dict[str, tuple[str, bytes, int]] = {
    "empty body": (SINGLE, b"", 422),
    "not JSON": (SINGLE, b"{not json", 422),
    "trailing garbage": (SINGLE, body(REQUEST) + b" }", 422),
    "JSON null": (SINGLE, b"null", 422),
    "JSON array": (MANY, b"[]", 422),
    "JSON string": (SINGLE, b'"notify everyone"', 422),
    "JSON number": (MANY, b"1e999", 422),
    "byte order mark": (SINGLE, b"\xef\xbb\xbf" + body(REQUEST), 422),
    "arrays nested 100,000 deep": (SINGLE, nested(100_000), 422),
    "objects nested 100,000 deep": (MANY, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 422),
    "a 5,000-digit integer": (SINGLE, body(REQUEST)[:-1] + b', "template_version": ' + b"9" * 5000 + b"}", 422),
    "a float overflow": (SINGLE, body(REQUEST)[:-1] + b', "template_version": 1e400}', 422),
    "an int past Avro's int": (SINGLE, body(REQUEST | {"template_version": 2**31}), 422),
    "a fractional version": (SINGLE, body(REQUEST | {"template_version": 1.5}), 422),
    "a date past the year 9999": (SINGLE, body(REQUEST | {"send_at": 1e20}), 422),
    "a date that is words": (SINGLE, body(REQUEST | {"send_at": "yesterday"}), 422),
    "null everywhere": (MANY, body({field: None for field in NotificationBatch.model_fields}), 422),
    "a null member": (MANY, body(BATCH | {"recipients": [None]}), 422),
    "recipients as an object": (MANY, body(BATCH | {"recipients": {"0": {"recipient": {"user_id": "u"}}}}), 422),
    "variables as an array": (SINGLE, body(REQUEST | {"variables": ["name", "Alice"]}), 422),
    "a number as a variable": (SINGLE, body(REQUEST | {"variables": {"name": 5}}), 422),
    "an object as metadata value": (SINGLE, body(REQUEST | {"metadata": {"k": {"nested": 1}}}), 422),
    "recipient as a string": (SINGLE, body(REQUEST | {"recipient": "user-1"}), 422),
    "channels as a string": (SINGLE, body(REQUEST | {"channels": "email"}), 422),
    "an unknown channel": (SINGLE, body(REQUEST | {"channels": ["fax"]}), 422),
    "1,000 channels": (SINGLE, body(REQUEST | {"channels": ["email"] * 1000}), 422),
    "an unknown field": (SINGLE, body(REQUEST | {"__proto__": {"admin": True}}), 422),
    "a batch to the single endpoint": (SINGLE, body(BATCH), 422),
    "invalid UTF-8": (SINGLE, b'{"template_id": "t", "recipient": {"user_id": "\xff\xfe"}}', 422),
    "a lone surrogate": (SINGLE, b'{"template_id": "t", "recipient": {"user_id": "\\ud800"}}', 422),
    "a raw NUL in a string": (SINGLE, b'{"template_id": "t", "recipient": {"user_id": "a\x00b"}}', 422),
    "an escaped NUL in the user id": (SINGLE, body(with_recipient(user_id="a\x00b")), 422),
    "a header injection in the tenant": (SINGLE, body(REQUEST | {"tenant": "a\r\nX-Admin: 1"}), 422),
    "257 emoji as idempotency key": (SINGLE, body(REQUEST | {"idempotency_key": "🔑" * 257}), 422),
    "an empty batch": (MANY, body(BATCH | {"recipients": []}), 422),
    "100,000 recipients": (MANY, body(BATCH | {"recipients": [{"recipient": {"user_id": "u"}}] * 100_000}), 422),
    "duplicate member keys": (MANY, body(BATCH | {"recipients": members("dup", "dup")}), 422),
    "a 7 MB idempotency key": (SINGLE, body(REQUEST | {"idempotency_key": "k" * 7_000_000}), 422),
    "a 7 MB variable name": (SINGLE, body(REQUEST | {"variables": {"n" * 7_000_000: "x"}}), 422),
    "a 1 MB variable": (SINGLE, body(REQUEST | {"variables": {"name": "x" * 1_000_000}}), 422),
    "201 variables": (SINGLE, body(REQUEST | {"variables": {f"v{i}": "x" for i in range(201)}}), 422),
    "a 9 MiB body": (SINGLE, body(REQUEST | {"variables": {"name": "x" * (9 * 1024 * 1024)}}), 413),
}


async def test_hostile_bodies_get_a_4xx_with_a_reason_never_a_500() -> None:
    producer = StandInProducer()
    async with await gateway_with(producer, gateway_rate_burst=1000) as client:
        for name, (path, raw, status) in HOSTILE.items():
            response = await client.post(path, data=raw, headers=KEY)
            assert response.status == status, (name, await response.text())
            payload = await response.json()
            assert payload["error"] and payload["detail"], name
            assert len(await response.read()) < 64 * 1024, f"{name}: the answer echoes the body"
        assert (await client.get("/health")).status == 200
        await accepted(client, SINGLE, REQUEST)
    assert len(producer.sent) == 1


async def test_a_broker_that_never_answers_is_503_after_the_produce_timeout() -> None:
    import asyncio

    class Hanging(StandInProducer):
        async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> object:
            await asyncio.sleep(3600)  # aiokafka, for a broker it cannot reach

    async with await gateway_with(Hanging(), gateway_produce_timeout_s=0.2) as client:
        response = await client.post("/v1/notifications", data=body(REQUEST), headers={"X-API-Key": "secret"})
        assert response.status == 503


async def test_send_at_more_than_30_days_ahead_is_refused_by_name(client: TestClient) -> None:
    for path, payload in ((SINGLE, REQUEST), (MANY, BATCH)):
        response = await client.post(path, data=body(payload | {"send_at": "2099-01-01T00:00:00Z"}), headers=KEY)
        assert response.status == 422
        [problem] = (await response.json())["detail"]
        assert problem["field"] == "send_at" and "30 days ahead" in problem["message"]


async def test_send_at_without_a_zone_is_utc_and_within_30_days_is_taken(client: TestClient) -> None:
    from datetime import timedelta

    soon = (datetime.now(timezone.utc) + timedelta(days=1)).replace(tzinfo=None).isoformat()
    parsed = parse(GatewayRequest, body(REQUEST | {"send_at": soon}))
    assert not isinstance(parsed, web.Response) and parsed.send_at.tzinfo is not None
