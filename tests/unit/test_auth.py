"""gateway/auth.py and gateway/admin.py: tenants' keys, the tenant a request acts for, and isolation.

The gateway runs with stand-ins for Kafka (a producer that records what it was given) and for
ClickHouse (a timeline that answers only for the tenant that owns the notification).
"""

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import server as server_module
from gateway.auth import ApiKeyLog, ApiKeys, key_parts, new_key, secret_hash
from gateway.server import Gateway
from schemas.models import ApiKeyChanged
from streams.codec import default_serde
from streams.settings import Settings
from streams.tables import cancellation_key
from streams.topics import CANCELLATIONS, REQUESTS, TENANTS

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ADMIN = {"X-API-Key": "admin-secret"}
REQUEST = {"template_id": "welcome", "recipient": {"user_id": "alice", "email": "alice@example.com"}}


class Producer:
    """aiokafka's producer as the gateway uses it: records (topic, key, value) and answers with metadata."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> object:
        self.sent.append((topic, key, value))
        return type("RecordMetadata", (), {"topic": topic, "partition": 0, "offset": len(self.sent)})()

    async def stop(self) -> None:
        pass

    def decoded(self, topic: str, schema: str) -> list[dict[str, Any]]:
        return [default_serde().decode(value, schema) for sent_to, _, value in self.sent if sent_to == topic]


def gateway_client(producer: Producer, ready: bool = True, **settings: Any) -> TestClient:
    gateway = Gateway(Settings(**{"api_key": "default-secret", "admin_api_key": "admin-secret", **settings}))
    app = gateway.web_app()
    app.on_startup.clear()  # no Kafka: the keys are folded by hand below
    app.on_cleanup.clear()
    gateway.kafka.producer = producer  # type: ignore[assignment]
    if ready:
        gateway.api_keys.ready.set()
    return TestClient(TestServer(app))


async def create_key(client: TestClient, tenant: str) -> str:
    response = await client.post(f"/v1/admin/tenants/{tenant}/keys", headers=ADMIN)
    assert response.status == 201, await response.text()
    return (await response.json())["api_key"]


# --- keys --------------------------------------------------------------------------------------------------


def test_a_new_key_names_its_record_and_only_the_secrets_hash_is_kept() -> None:
    key, record = new_key("acme", NOW)
    key_id, secret = key_parts(key) or ("", "")
    assert key.startswith("hk_") and key_id == record.key_id and len(secret) >= 43  # 32 bytes, base64url
    assert record.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest() == secret_hash(secret)
    assert secret not in json.dumps(record.model_dump(mode="json"))
    assert new_key("acme", NOW)[0] != key


@pytest.mark.parametrize("tenant", ["", "a/b", "@acme", "a b", "x" * 129])
def test_a_key_for_a_tenant_name_keys_cannot_hold_is_refused(tenant: str) -> None:
    with pytest.raises(ValueError):
        new_key(tenant, NOW)


def test_the_key_table_knows_each_keys_tenant_and_refuses_the_rest() -> None:
    keys = ApiKeys("default-secret")
    acme, acme_record = new_key("acme", NOW)
    globex, globex_record = new_key("globex", NOW)
    keys.fold(acme_record.to_avro())
    keys.fold(globex_record.to_avro())
    assert (keys.tenant(acme), keys.tenant(globex), keys.tenant("default-secret")) == ("acme", "globex", "default")
    key_id, secret = key_parts(acme) or ("", "")
    wrong_secret = f"hk_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    for refused in (wrong_secret, f"hk_{key_id}_", "hk_", "hk_nope_secret", "", "default-secret ", secret):
        assert keys.tenant(refused) is None, refused
    keys.fold(acme_record.model_copy(update={"revoked_at": NOW}).to_avro())
    assert keys.tenant(acme) is None and keys.tenant(globex) == "globex"


def test_the_key_log_folds_encoded_records_and_forgets_a_tombstoned_key() -> None:
    keys = ApiKeys("default-secret")
    log = ApiKeyLog(Settings(), keys)
    key, record = new_key("acme", NOW)
    log.apply(record.key_id.encode(), default_serde().encode_model(record))
    assert keys.tenant(key) == "acme" and len(log) == 1
    log.apply(b"garbage", b"\xc3\x01garbage")  # skipped, not fatal
    log.apply(record.key_id.encode(), None)
    assert keys.tenant(key) is None and len(log) == 0


# --- the admin endpoints -----------------------------------------------------------------------------------


async def test_admin_endpoints_need_the_admin_key_and_are_off_without_one() -> None:
    async with gateway_client(Producer()) as client:
        for headers in ({}, {"X-API-Key": "default-secret"}, {"X-API-Key": "wrong"}):
            assert (await client.post("/v1/admin/tenants/acme/keys", headers=headers)).status == 401
            assert (await client.get("/v1/admin/keys", headers=headers)).status == 401
    async with gateway_client(Producer(), admin_api_key="") as client:
        response = await client.get("/v1/admin/keys", headers=ADMIN)
        assert response.status == 403 and (await response.json())["error"] == "admin_disabled"


async def test_a_created_key_is_an_event_works_at_once_and_a_revoked_one_is_refused() -> None:
    producer = Producer()
    async with gateway_client(producer) as client:
        key = await create_key(client, "acme")
        [created] = producer.decoded(TENANTS.name, "ApiKeyChanged")
        assert created["tenant"] == "acme" and created["revoked_at"] is None
        assert producer.sent[0][1] == created["key_id"].encode()  # keyed by key id: compaction keeps the latest
        assert key not in str(producer.sent) and (key_parts(key) or ("", ""))[1] not in str(producer.sent)

        assert (await client.post("/v1/notifications", json=REQUEST, headers={"X-API-Key": key})).status == 202
        listed = (await (await client.get("/v1/admin/keys", headers=ADMIN)).json())["keys"]
        assert [(k["key_id"], k["tenant"], k["revoked_at"]) for k in listed] == [(created["key_id"], "acme", None)]
        assert "api_key" not in listed[0] and "secret_sha256" not in listed[0]

        revoked = await client.delete(f"/v1/admin/keys/{created['key_id']}", headers=ADMIN)
        assert revoked.status == 200 and (await revoked.json())["revoked_at"]
        assert producer.decoded(TENANTS.name, "ApiKeyChanged")[-1]["revoked_at"] is not None
        response = await client.post("/v1/notifications", json=REQUEST, headers={"X-API-Key": key})
        assert response.status == 401
        assert (await client.delete("/v1/admin/keys/nope", headers=ADMIN)).status == 404
        assert (await client.post("/v1/admin/tenants/a%20b/keys", headers=ADMIN)).status == 422


async def test_a_tenant_key_is_503_not_401_until_the_gateway_has_read_the_keys() -> None:
    key, _ = new_key("acme", NOW)
    async with gateway_client(Producer(), ready=False) as client:
        response = await client.post("/v1/notifications", json=REQUEST, headers={"X-API-Key": key})
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        default = await client.post("/v1/notifications", json=REQUEST, headers={"X-API-Key": "default-secret"})
        assert default.status == 202  # the default tenant's key is in the settings


# --- the tenant comes from the key -------------------------------------------------------------------------


async def test_a_request_is_its_keys_tenants_and_naming_another_is_403() -> None:
    producer = Producer()
    async with gateway_client(producer) as client:
        acme = {"X-API-Key": await create_key(client, "acme")}
        batch = {"template_id": "welcome", "recipients": [{"recipient": {"user_id": "u1"}}]}
        assert (await client.post("/v1/notifications", json=REQUEST, headers=acme)).status == 202
        assert (await client.post("/v1/notifications", json=REQUEST | {"tenant": "acme"}, headers=acme)).status == 202
        assert (await client.post("/v1/notifications/batch", json=batch, headers=acme)).status == 202
        for path, body in (("/v1/notifications", REQUEST), ("/v1/notifications/batch", batch)):
            for key, other in ((acme, "globex"), (acme, "default"), ({"X-API-Key": "default-secret"}, "acme")):
                response = await client.post(path, json=body | {"tenant": other}, headers=key)
                assert response.status == 403, await response.text()
                assert (await response.json())["detail"][0]["field"] == "tenant"
    serde = default_serde()
    produced = [serde.decode_any(value, ("NotificationRequest", "NotificationBatch"))[1]
                for topic, _, value in producer.sent if topic == REQUESTS.name]
    assert [r["tenant"] for r in produced] == ["acme", "acme", "acme"]


async def test_the_same_idempotency_key_of_two_tenants_is_two_notifications() -> None:
    async with gateway_client(Producer()) as client:
        ids = []
        for tenant in ("acme", "globex"):
            key = {"X-API-Key": await create_key(client, tenant)}
            response = await client.post("/v1/notifications", json=REQUEST | {"idempotency_key": "order-1"},
                                         headers=key)
            ids.append((await response.json())["notification_id"])
    assert ids[0] != ids[1]


async def test_status_and_cancel_of_another_tenants_notification_are_404(monkeypatch: pytest.MonkeyPatch) -> None:
    owned: dict[uuid.UUID, str] = {}  # what ClickHouse knows: each notification's tenant

    def timeline(client: object, notification_id: uuid.UUID, tenant: str | None) -> list[dict[str, Any]]:
        if owned.get(notification_id) != tenant:
            return []
        return [{"at_ms": 1, "stage": "ingest", "status": "accepted", "channel": "", "provider": "", "attempt": 0,
                 "error_code": "", "detail": "", "latency_ms": None}]

    def tenants_of(client: object, notification_id: uuid.UUID) -> set[str]:
        return {owned[notification_id]} if notification_id in owned else set()

    monkeypatch.setattr(server_module, "timeline", timeline)
    monkeypatch.setattr(server_module, "tenants_of", tenants_of)
    producer = Producer()
    async with gateway_client(producer) as client:
        acme = {"X-API-Key": await create_key(client, "acme")}
        globex = {"X-API-Key": await create_key(client, "globex")}
        posted = await client.post("/v1/notifications", json=REQUEST, headers=acme)
        nid = uuid.UUID((await posted.json())["notification_id"])
        owned[nid] = "acme"
        assert (await client.get(f"/v1/notifications/{nid}", headers=acme)).status == 200
        assert (await client.get(f"/v1/notifications/{nid}", headers=globex)).status == 404
        assert (await client.get(f"/v1/notifications/{nid}", headers={"X-API-Key": "default-secret"})).status == 404
        assert (await client.delete(f"/v1/notifications/{nid}", headers=globex)).status == 404
        assert not producer.decoded(CANCELLATIONS.name, "NotificationCancelled")
        assert (await client.delete(f"/v1/notifications/{nid}", headers=acme)).status == 202
        not_known_yet = uuid.uuid4()
        assert (await client.delete(f"/v1/notifications/{not_known_yet}", headers=globex)).status == 202
    cancellations = [(key, default_serde().decode(value, "NotificationCancelled"))
                     for topic, key, value in producer.sent if topic == CANCELLATIONS.name]
    assert [(r["notification_id"], r["tenant"]) for _, r in cancellations] == [(nid, "acme"), (not_known_yet, "globex")]
    assert [key for key, _ in cancellations] == [cancellation_key("acme", nid), cancellation_key("globex", not_known_yet)]


def test_a_record_of_the_schema_round_trips() -> None:
    _, record = new_key("acme", NOW)
    assert ApiKeyChanged.from_avro(default_serde().decode(default_serde().encode_model(record), "ApiKeyChanged")) == record
