"""gateway/inbox.py: the fold of herald.inbox, user tokens, and the inbox's HTTP and SSE endpoints.

The endpoints run in aiohttp's test server against an Inbox folded here; the append to herald.inbox
is a stand-in that folds what it is given, as the gateway's tail would read it back.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaConnectionError

from agents.channels.in_app import inbox_key, message_event_id
from gateway import follow
from gateway import inbox as inbox_module
from gateway.auth import API_KEYS, ApiKeys, new_key
from gateway.inbox import Inbox, InboxApi, InboxLog, InvalidToken, mint_token, token_owner
from gateway.server import Gateway, RateLimiter
from schemas.models import InboxEvent, InboxEventKind
from streams.codec import default_serde
from streams.settings import Settings
from streams.topics import INBOX, topic_config

SECRET = "test-inbox-secret"
SETTINGS = Settings(api_key="secret", inbox={"token_secret": SECRET})
ALICE = ("acme", "alice")
NOW = datetime.now(UTC)


def event(kind: str, notification: int, owner: tuple[str, str] = ALICE, at: datetime = NOW) -> dict[str, Any]:
    """An InboxEvent as the fold gets it from the serde."""
    notification_id = uuid.UUID(int=notification)
    content = {"subject": f"Subject {notification}", "text": f"Text {notification}", "data": {"link": "/x"},
               "category": "transactional", "template_id": "welcome"} if kind == "message" else {}
    record = InboxEvent(event_id=message_event_id(notification_id, *owner) if kind == "message" else uuid.uuid4(),
                        kind=kind, tenant=owner[0], user_id=owner[1], notification_id=notification_id,
                        occurred_at=at, **content)
    return default_serde().decode(default_serde().encode("InboxEvent", record.to_avro()), "InboxEvent")


def folded(*events: dict[str, Any], max_messages: int = 200, retention_ms: int = 3_600_000) -> Inbox:
    inbox = Inbox(max_messages, retention_ms)
    for e in events:
        inbox.fold(e)
    inbox.ready.set()
    return inbox


def subjects(inbox: Inbox, owner: tuple[str, str] = ALICE) -> list[str | None]:
    return [m.subject for m in inbox.messages(owner)]


# --- The fold ----------------------------------------------------------------------------------------------


def test_messages_are_newest_first_and_a_resend_is_kept_once() -> None:
    inbox = folded(event("message", 1), event("message", 2), event("message", 1), event("message", 3))
    assert subjects(inbox) == ["Subject 3", "Subject 2", "Subject 1"]
    assert inbox.unread(ALICE) == 3


def test_read_and_seen_are_applied_and_read_implies_seen() -> None:
    inbox = folded(event("message", 1), event("message", 2), event("seen", 1), event("read", 2))
    state = {m.notification_id.int: (m.read, m.seen) for m in inbox.messages(ALICE)}
    assert state == {1: (False, True), 2: (True, True)}
    assert inbox.unread(ALICE) == 1


def test_read_of_a_message_the_user_does_not_have_changes_nothing() -> None:
    inbox = folded(event("message", 1), event("read", 9), event("read", 1, owner=("acme", "bob")))
    assert inbox.unread(ALICE) == 1 and inbox.messages(("acme", "bob")) == []


def test_inboxes_are_per_tenant_and_user() -> None:
    inbox = folded(event("message", 1), event("message", 2, owner=("other", "alice")),
                   event("message", 3, owner=("acme", "bob")))
    assert subjects(inbox) == ["Subject 1"]
    assert subjects(inbox, ("other", "alice")) == ["Subject 2"]


def test_a_user_keeps_the_newest_max_messages() -> None:
    inbox = folded(*(event("message", n) for n in range(1, 6)), max_messages=3)
    assert subjects(inbox) == ["Subject 5", "Subject 4", "Subject 3"]


def test_messages_past_the_retention_leave_the_inbox() -> None:
    inbox = folded(event("message", 1, at=NOW - timedelta(hours=2)), event("message", 2), retention_ms=3_600_000)
    assert subjects(inbox) == ["Subject 2"]


def test_the_log_folds_framed_records_and_skips_undecodable_ones() -> None:
    inbox = Inbox(200, -1)
    log = InboxLog(SETTINGS, inbox)
    serde = default_serde()
    log.apply(inbox_key(*ALICE), serde.encode("InboxEvent", event("message", 1)))
    log.apply(inbox_key(*ALICE), b"not avro")
    log.apply(inbox_key(*ALICE), None)
    assert subjects(inbox) == ["Subject 1"] and log.ready is inbox.ready


def test_herald_inbox_is_public_and_kept_for_the_inbox_retention() -> None:
    assert not INBOX.bundled and not INBOX.compacted and INBOX.schemas == ("InboxEvent",)
    settings = Settings(inbox={"retention_ms": 1234})
    assert topic_config(INBOX, settings)["retention.ms"] == "1234"


# --- Tokens ------------------------------------------------------------------------------------------------


def test_a_token_names_its_tenant_and_user_until_it_expires() -> None:
    token = mint_token(SECRET, "acme", "alice", ttl_s=60, now=1000)
    assert token_owner(SECRET, token, now=1059) == ("acme", "alice")
    with pytest.raises(InvalidToken, match="expired"):
        token_owner(SECRET, token, now=1060)


@pytest.mark.parametrize("tamper", [
    lambda t: mint_token(SECRET, "acme", "mallory", 60, now=1000).split(".")[0] + "." + t.split(".")[1],
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
    lambda t: mint_token("another-secret", "acme", "alice", 60, now=1000),
    lambda t: t.split(".")[0],
    lambda t: "",
], ids=["other-payload", "signature", "other-secret", "unsigned", "empty"])
def test_a_tampered_token_is_refused(tamper: Any) -> None:
    token = mint_token(SECRET, "acme", "alice", ttl_s=60, now=1000)
    with pytest.raises(InvalidToken):
        token_owner(SECRET, tamper(token), now=1001)


# --- HTTP --------------------------------------------------------------------------------------------------


class Log:
    """Stands in for herald.inbox: keeps what is appended and folds it back, as the gateway's tail would."""

    def __init__(self, inbox: Inbox, error: Exception | None = None) -> None:
        self.inbox = inbox
        self.error = error
        self.appended: list[tuple[bytes, dict[str, Any]]] = []

    async def append(self, key: bytes, value: bytes) -> None:
        if self.error:
            raise self.error
        record = default_serde().decode(value, "InboxEvent")
        self.appended.append((key, record))
        self.inbox.fold(record)


ACME_KEY, ACME_KEY_RECORD = new_key("acme", datetime.now(UTC))


def client_for(inbox: Inbox, log: Log | None = None) -> TestClient:
    app = web.Application()
    app[API_KEYS] = ApiKeys(SETTINGS.api_key)
    app[API_KEYS].fold(ACME_KEY_RECORD.to_avro())
    app[API_KEYS].ready.set()
    api = InboxApi(SETTINGS, inbox, (log or Log(inbox)).append, RateLimiter(0, 0))
    app.add_subapp("/v1/users", api.web_app())
    return TestClient(TestServer(app))


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    inbox = folded(*(event("message", n) for n in range(1, 6)), event("read", 2),
                   event("message", 7, owner=("acme", "bob")))
    async with client_for(inbox) as test_client:
        yield test_client


def token(user: str = "alice", tenant: str = "acme", ttl: float = 24 * 3600) -> dict[str, str]:
    # A day: the parametrized cases mint theirs when pytest collects them, maybe many minutes before they run.
    return {"Authorization": f"Bearer {mint_token(SECRET, tenant, user, ttl)}"}


async def test_the_inbox_pages_newest_first_with_the_unread_count(client: TestClient) -> None:
    first = await (await client.get("/v1/users/alice/inbox?limit=3", headers=token())).json()
    assert [m["subject"] for m in first["messages"]] == ["Subject 5", "Subject 4", "Subject 3"]
    assert first["unread"] == 4 and first["next"] == str(uuid.UUID(int=3))
    message = first["messages"][0]
    assert message == {"id": str(message_event_id(uuid.UUID(int=5), *ALICE)), "notification_id": str(uuid.UUID(int=5)),
                       "subject": "Subject 5", "text": "Text 5", "data": {"link": "/x"}, "category": "transactional",
                       "created_at": message["created_at"], "read": False, "seen": False}
    rest = await (await client.get(f"/v1/users/alice/inbox?limit=3&before={first['next']}", headers=token())).json()
    assert [(m["subject"], m["read"]) for m in rest["messages"]] == [("Subject 2", True), ("Subject 1", False)]
    assert rest["next"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=x", "before=nope", "tenant="])
async def test_bad_query_parameters_are_422(client: TestClient, query: str) -> None:
    response = await client.get(f"/v1/users/alice/inbox?{query}", headers={"X-API-Key": "secret"})
    assert response.status == 422


async def test_an_api_key_opens_any_inbox_of_its_own_tenant_only(client: TestClient) -> None:
    response = await client.get("/v1/users/bob/inbox?tenant=acme", headers={"X-API-Key": ACME_KEY})
    assert [m["subject"] for m in (await response.json())["messages"]] == ["Subject 7"]
    as_bearer = await client.get("/v1/users/alice/inbox", headers={"Authorization": f"Bearer {ACME_KEY}"})
    assert (await as_bearer.json())["unread"] == 4
    default_tenant = await client.get("/v1/users/alice/inbox", headers={"X-API-Key": "secret"})
    assert (await default_tenant.json())["messages"] == []
    other_tenant = await client.get("/v1/users/alice/inbox?tenant=acme", headers={"X-API-Key": "secret"})
    assert other_tenant.status == 403 and (await other_tenant.json())["detail"][0]["field"] == "tenant"


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/v1/users/alice/inbox", {}, 401),
    ("/v1/users/alice/inbox", {"X-API-Key": "wrong"}, 401),
    ("/v1/users/alice/inbox", {"Authorization": "Bearer wrong"}, 401),
    ("/v1/users/alice/inbox", token(ttl=-1), 401),
    ("/v1/users/alice/inbox?token=secret", {}, 401),  # the API key is never taken from the URL
    ("/v1/users/bob/inbox", token(), 403),
    ("/v1/users/alice/inbox?tenant=other", token(), 403),
])
async def test_a_user_sees_only_their_own_inbox(client: TestClient, path: str, headers: dict, status: int) -> None:
    response = await client.get(path, headers=headers)
    assert response.status == status
    assert "messages" not in await response.json()


async def test_a_token_in_the_query_opens_the_inbox(client: TestClient) -> None:
    signed = mint_token(SECRET, "acme", "alice", 60)
    response = await client.get(f"/v1/users/alice/inbox?token={signed}&tenant=acme")
    assert (await response.json())["unread"] == 4


async def test_read_is_appended_to_the_log_and_applied_when_folded() -> None:
    inbox = folded(event("message", 1), event("message", 2))
    log = Log(inbox)
    async with client_for(inbox, log) as client:
        target = uuid.UUID(int=1)
        response = await client.post(f"/v1/users/alice/inbox/{target}/read", headers=token())
        assert response.status == 202
        [(key, record)] = log.appended
        assert key == b"acme/alice"
        assert (record["kind"], record["tenant"], record["user_id"]) == ("read", *ALICE)
        assert record["notification_id"] == target
        page = await (await client.get("/v1/users/alice/inbox", headers=token())).json()
        assert page["unread"] == 1 and [m["read"] for m in page["messages"]] == [False, True]
        again = await client.post(f"/v1/users/alice/inbox/{target}/read", headers=token())
        assert again.status == 200 and len(log.appended) == 1  # already read: nothing appended
        seen = await client.post(f"/v1/users/alice/inbox/{uuid.UUID(int=2)}/seen", headers=token())
        assert seen.status == 202 and log.appended[-1][1]["kind"] == "seen"


async def test_read_of_a_message_not_in_the_inbox_is_404(client: TestClient) -> None:
    bobs = uuid.UUID(int=7)
    assert (await client.post(f"/v1/users/alice/inbox/{bobs}/read", headers=token())).status == 404
    assert (await client.post("/v1/users/alice/inbox/not-a-uuid/seen", headers=token())).status == 422


async def test_read_while_kafka_is_away_is_503_and_changes_nothing() -> None:
    inbox = folded(event("message", 1))
    async with client_for(inbox, Log(inbox, KafkaConnectionError("away"))) as client:
        response = await client.post(f"/v1/users/alice/inbox/{uuid.UUID(int=1)}/read", headers=token())
        assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert inbox.unread(ALICE) == 1


async def test_the_inbox_answers_503_until_its_log_caught_up() -> None:
    inbox = Inbox(200, -1)
    async with client_for(inbox) as client:
        assert (await client.get("/v1/users/alice/inbox", headers=token())).status == 503
        inbox.ready.set()
        assert (await client.get("/v1/users/alice/inbox", headers=token())).status == 200


async def test_the_gateway_lets_a_user_token_through_to_the_inbox() -> None:
    gateway = Gateway(SETTINGS)
    app = gateway.web_app()
    app.on_startup.clear()  # Kafka and ClickHouse; the inbox's log is not followed here
    app.on_cleanup.clear()
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/v1/users/alice/inbox", headers=token())
        assert response.status == 503 and (await response.json())["error"] == "unavailable"
        assert (await client.get("/v1/users/alice/inbox", headers=token(user="bob"))).status == 403


# --- Server-Sent Events ------------------------------------------------------------------------------------


async def next_event(response: Any) -> str:
    return (await asyncio.wait_for(response.content.readuntil(b"\n\n"), 2)).decode()


async def test_the_stream_sends_each_message_and_read_of_the_user_as_it_is_folded() -> None:
    inbox = folded(event("message", 1))
    async with client_for(inbox) as client:
        response = await client.get(f"/v1/users/alice/inbox/stream?token={mint_token(SECRET, 'acme', 'alice', 60)}")
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await next_event(response) == ": connected\n\n"
        inbox.fold(event("message", 3, owner=("acme", "bob")))  # someone else's: not sent
        inbox.fold(event("message", 2))
        kind, data = (await next_event(response)).split("\n")[:2]
        assert kind == "event: message"
        payload = json.loads(data.removeprefix("data: "))
        assert payload["message"]["subject"] == "Subject 2" and payload["unread"] == 2
        inbox.fold(event("read", 1))
        assert await next_event(response) == (
            f'event: read\ndata: {json.dumps({"notification_id": str(uuid.UUID(int=1)), "unread": 1})}\n\n')


async def test_the_stream_keeps_the_connection_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox_module, "KEEP_ALIVE_S", 0.05)
    async with client_for(folded()) as client:
        response = await client.get("/v1/users/alice/inbox/stream", headers=token())
        assert [await next_event(response) for _ in range(2)] == [": connected\n\n", ": keep-alive\n\n"]


def test_a_subscriber_that_falls_behind_is_dropped_not_waited_for() -> None:
    inbox = folded()
    slow, other = inbox.subscribe(ALICE), inbox.subscribe(("acme", "bob"))
    assert slow is not None and other is not None
    for n in range(inbox_module.STREAM_QUEUE + 1):
        inbox.fold(event("message", n))
    assert slow.get_nowait() is None  # the end of its stream, in place of what it did not take
    assert ALICE not in inbox.streams and inbox.streams[("acme", "bob")] == {other}
    assert len(inbox.messages(ALICE)) == inbox_module.STREAM_QUEUE + 1


def test_a_user_has_a_bounded_number_of_streams() -> None:
    inbox = folded()
    queues = [inbox.subscribe(ALICE) for _ in range(inbox_module.STREAMS_PER_USER)]
    assert None not in queues and inbox.subscribe(ALICE) is None
    inbox.unsubscribe(ALICE, queues[0])
    assert inbox.subscribe(ALICE) is not None


async def test_the_follower_retries_while_kafka_is_away_and_stops_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "FOLLOW_RETRY_S", 0.05)
    inbox = Inbox(200, -1)
    nowhere = Settings(kafka_bootstrap="127.0.0.1:1")  # nothing listens there
    follower = follow.Follower(lambda: InboxLog(nowhere, inbox))
    await follower.on_startup(web.Application())
    await asyncio.sleep(0.3)
    assert follower.task is not None and not follower.task.done() and not inbox.ready.is_set()
    await follower.on_cleanup(web.Application())
    assert follower.task.done() and follower.table is None
