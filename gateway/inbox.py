"""The in-app inbox: a projection of herald.inbox, and its HTTP API on the gateway.

GET  /v1/users/{user_id}/inbox?limit=&before=              the user's messages, newest first; `unread`; `next`
POST /v1/users/{user_id}/inbox/{notification_id}/read      (and /seen) an InboxEvent on herald.inbox; 202
GET  /v1/users/{user_id}/inbox/stream                      Server-Sent Events: each message, read and seen

Event-sourced: the inbox is folded from herald.inbox alone, read from the beginning by every gateway
(no consumer group, `streams.tables.FoldedTable`). Deliver's in_app adapter appends messages; read
and seen are appended by the gateway and applied when the fold reads them back, never in place, so
a restarted gateway rebuilds the same inbox. A GET right after a POST may not show it yet; the
stream does once it is applied.

Memory: per user, the newest `inbox.max_messages` (200) messages within `inbox.retention_ms` (90
days). A message costs about 900 bytes of Python objects plus its content (subject, text and data,
≤ 64 KiB: agents/channels/in_app.py); one with a 100-character text measured 1,035 bytes (tracemalloc),
so a full inbox of such messages is about 200 KiB. Every gateway holds every user's inbox.

Auth: a user sees only their own inbox. A server-side caller sends an API key (`X-API-Key` or
`Authorization: Bearer`) and reads its key's tenant's inboxes (`?tenant=`, if given, must be that
tenant: gateway/auth.py); a browser sends a
token signed for one tenant and user (`Authorization: Bearer <token>`, or `?token=` where it cannot
set headers, as EventSource): base64url(JSON {tenant, user_id, exp}) "." base64url(HMAC-SHA256 of the
first part with `inbox.token_secret`). `herald inbox token USER` mints one.
"""

import asyncio
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from aiokafka.errors import KafkaError
from pydantic import AfterValidator, BaseModel, Field

from agents.channels.in_app import inbox_key, user_id
from gateway.auth import key_parts, presented_key, refuse_other_tenant, same_key, tenant_of
from gateway.errors import invalid, json_error, problem
from gateway.follow import Follower
from gateway.openapi import NOT_FOUND, UNAVAILABLE, Inputs, Operation, Reply, endpoint, error, reply
from gateway.server import CONTROL_CHARACTERS, MAX_NAME_CHARS, USERS_PATH, RateLimiter, plain
from schemas.models import InboxEvent, InboxEventKind
from schemas.serde import AvroSerde
from streams import signed
from streams.codec import default_serde
from streams.settings import Settings
from streams.tables import FoldedTable
from streams.topics import INBOX

if TYPE_CHECKING:
    from gateway.server import Gateway

Owner = tuple[str, str]  # (tenant, user id)
OWNER = web.RequestKey("owner", tuple)  # whose inbox a request may read, set by InboxApi.authorize
# Appends one InboxEvent (key, framed value) to herald.inbox; returns once the broker acknowledged it.
Append = Callable[[bytes, bytes], Awaitable[None]]

PAGE_DEFAULT, PAGE_MAX = 50, 200
# Events a stream's subscriber may fall behind by before it is dropped (the client reconnects and
# reads the inbox again): a slow reader never holds up the fold.
STREAM_QUEUE = 100
STREAMS_PER_USER = 8
KEEP_ALIVE_S = 15.0


# --- Tokens ------------------------------------------------------------------------------------------------


class InvalidToken(ValueError):
    pass


def mint_token(secret: str, tenant: str, user: str, ttl_s: float, now: float | None = None) -> str:
    """A token for one user's inbox, valid `ttl_s` seconds."""
    expires = math.floor((time.time() if now is None else now) + ttl_s)
    return signed.sign(secret, {"tenant": tenant, "user_id": user, "exp": expires})


def token_owner(secret: str, token: str, now: float | None = None) -> Owner:
    """The (tenant, user) a token was signed for; raises InvalidToken for a wrong signature or an expired token."""
    claims = signed.verify(secret, token)
    if claims is None:
        raise InvalidToken("the token's signature does not match")
    tenant, user, expires = claims.get("tenant"), claims.get("user_id"), claims.get("exp")
    if not (isinstance(tenant, str) and isinstance(user, str) and isinstance(expires, int)):
        raise InvalidToken("the token is malformed")
    if expires <= (time.time() if now is None else now):
        raise InvalidToken("the token has expired")
    return tenant, user


# --- The projection ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    event_id: uuid.UUID
    notification_id: uuid.UUID
    subject: str | None
    text: str | None
    data: dict[str, str]
    category: str | None
    created_at: datetime
    read: bool = False
    seen: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"id": str(self.event_id), "notification_id": str(self.notification_id), "subject": self.subject,
                "text": self.text, "data": self.data, "category": self.category,
                "created_at": self.created_at.isoformat(), "read": self.read, "seen": self.seen}


def sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


class Inbox:
    """Every user's inbox, folded from InboxEvents in log order; and the streams that watch them."""

    def __init__(self, max_messages: int, retention_ms: int) -> None:
        self.max_messages = max_messages
        self.retention = timedelta(milliseconds=retention_ms) if retention_ms > 0 else None
        # Oldest first, by notification id: a user's events are in log order (one key, one partition).
        self.users: dict[Owner, OrderedDict[uuid.UUID, Message]] = {}
        self.streams: dict[Owner, set[asyncio.Queue[bytes | None]]] = {}
        self.ready = asyncio.Event()  # set once the fold caught up with the log

    def fold(self, event: dict[str, Any]) -> None:
        owner = (event["tenant"], event["user_id"])
        if event["kind"] == InboxEventKind.message:
            message = self.add(owner, event)
            if message:
                self.publish(owner, "message", {"message": message.as_json()})
        elif self.mark(owner, event["notification_id"], event["kind"]):
            self.publish(owner, event["kind"], {"notification_id": str(event["notification_id"])})

    def add(self, owner: Owner, event: dict[str, Any]) -> Message | None:
        messages = self.users.setdefault(owner, OrderedDict())
        # One message per notification and inbox. Its event id is derived from both (in_app.message_event_id),
        # so this is the dedup by event id, without a second index: a resend after a crash is dropped.
        if event["notification_id"] in messages:
            return None
        message = Message(event["event_id"], event["notification_id"], event["subject"], event["text"],
                          event["data"], event["category"], event["occurred_at"])
        messages[message.notification_id] = message
        while len(messages) > self.max_messages:
            messages.popitem(last=False)
        return message

    def mark(self, owner: Owner, notification_id: uuid.UUID, kind: str) -> bool:
        """Apply read or seen (read implies seen); False when there was nothing to change."""
        message = self.users.get(owner, {}).get(notification_id)
        if message is None or (message.read if kind == InboxEventKind.read else message.seen):
            return False
        message.seen = True
        message.read = message.read or kind == InboxEventKind.read
        return True

    def messages(self, owner: Owner) -> list[Message]:
        """The user's messages, newest first, without those past the retention."""
        messages = self.users.get(owner)
        if not messages:
            return []
        if self.retention:
            oldest = datetime.now(UTC) - self.retention
            while messages and next(iter(messages.values())).created_at < oldest:
                messages.popitem(last=False)
        return list(reversed(messages.values()))

    def find(self, owner: Owner, notification_id: uuid.UUID) -> Message | None:
        return next((m for m in self.messages(owner) if m.notification_id == notification_id), None)

    def unread(self, owner: Owner) -> int:
        return sum(not m.read for m in self.messages(owner))

    def page(self, owner: Owner, limit: int, before: uuid.UUID | None) -> dict[str, Any]:
        """Up to `limit` messages, newest first, older than `before` (a message's notification id) if given."""
        messages = self.messages(owner)
        if before is not None:
            ids = [m.notification_id for m in messages]
            # A cursor no longer held was evicted, and so was everything older: nothing is left.
            messages = messages[ids.index(before) + 1:] if before in ids else []
        shown = messages[:limit]
        more = len(messages) > limit
        return {"messages": [m.as_json() for m in shown], "unread": self.unread(owner),
                "next": str(shown[-1].notification_id) if more else None}

    def subscribe(self, owner: Owner) -> asyncio.Queue[bytes | None] | None:
        """A queue of the user's events as they are applied; None when the user has too many streams."""
        streams = self.streams.setdefault(owner, set())
        if len(streams) >= STREAMS_PER_USER:
            return None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_QUEUE)
        streams.add(queue)
        return queue

    def unsubscribe(self, owner: Owner, queue: asyncio.Queue[bytes | None]) -> None:
        streams = self.streams.get(owner, set())
        streams.discard(queue)
        if not streams:
            self.streams.pop(owner, None)

    def publish(self, owner: Owner, kind: str, payload: dict[str, Any]) -> None:
        if owner not in self.streams:
            return
        event = sse(kind, payload | {"unread": self.unread(owner)})
        for queue in list(self.streams[owner]):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.unsubscribe(owner, queue)
                end(queue)

    def close_streams(self) -> None:
        for owner, queues in list(self.streams.items()):
            for queue in list(queues):
                self.unsubscribe(owner, queue)
                end(queue)


def end(queue: asyncio.Queue[bytes | None]) -> None:
    """Tell a stream's handler to finish: what it has not sent yet is dropped."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


class InboxLog(FoldedTable):
    """herald.inbox, folded into an Inbox from the beginning and tailed."""

    spec = INBOX

    def __init__(self, settings: Settings, inbox: Inbox, serde: AvroSerde | None = None, **kwargs: Any) -> None:
        super().__init__(settings, serde, **kwargs)
        self.inbox = inbox
        self.ready = inbox.ready  # the inbox serves once its log caught up

    def fold(self, key: bytes, record: dict[str, Any] | None) -> None:
        if record is not None:  # herald.inbox is not compacted: a tombstone means nothing
            self.inbox.fold(record)

    def __len__(self) -> int:
        return len(self.inbox.users)


# --- HTTP --------------------------------------------------------------------------------------------------


UserId = Annotated[str, AfterValidator(user_id)]
Tenant = Annotated[plain(MAX_NAME_CHARS), Field(min_length=1)]


class InboxPath(BaseModel):
    user_id: UserId


class MessagePath(InboxPath):
    notification_id: uuid.UUID


class InboxQuery(BaseModel):
    tenant: Tenant | None = None
    """A server-side caller's tenant (default "default"); a token names its own."""


class PageQuery(InboxQuery):
    limit: int = Field(PAGE_DEFAULT, ge=1, le=PAGE_MAX)
    before: uuid.UUID | None = None
    """Messages older than this one (a page's `next`)."""


class MessageView(BaseModel):
    id: uuid.UUID
    notification_id: uuid.UUID
    subject: str | None
    text: str | None
    data: dict[str, str]
    category: str | None
    created_at: datetime
    read: bool
    seen: bool


class InboxPage(BaseModel):
    messages: list[MessageView]
    unread: int
    next: uuid.UUID | None
    """Pass as `before` for the next page; null on the last."""


class Marked(BaseModel):
    notification_id: uuid.UUID
    read: bool
    seen: bool


INBOX_AUTH = ({"apiKey": []}, {"bearer": []}, {"inboxToken": []})
FORBIDDEN = {403: error("the token is for another user's inbox")}


def owner_problems(request: web.Request) -> tuple[Owner | None, list[dict[str, str]]]:
    """(tenant or None, user id) the path and `?tenant=` name, or the problems with them."""
    problems = []
    try:
        user = user_id(request.match_info["user_id"])
    except ValueError as exc:
        problems.append(problem("user_id", str(exc)))
    tenant = request.query.get("tenant")
    if tenant is not None and (not tenant or len(tenant) > MAX_NAME_CHARS or CONTROL_CHARACTERS.search(tenant)):
        problems.append(problem("tenant", f"is 1 to {MAX_NAME_CHARS} characters, without control characters"))
    return (None if problems else (tenant, user)), problems  # type: ignore[return-value]


def bearer(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def event_record(kind: InboxEventKind, owner: Owner, notification_id: uuid.UUID) -> InboxEvent:
    return InboxEvent(event_id=uuid.uuid4(), kind=kind, tenant=owner[0], user_id=owner[1],
                      notification_id=notification_id, occurred_at=datetime.now(UTC))


class InboxApi:
    """The inbox's endpoints, as an aiohttp sub-application mounted at /v1/users."""

    def __init__(self, settings: Settings, inbox: Inbox, append: Append, limiter: RateLimiter,
                 serde: AvroSerde | None = None) -> None:
        self.settings = settings
        self.inbox = inbox
        self.append = append
        self.limiter = limiter
        self.serde = serde or default_serde()

    def web_app(self) -> web.Application:
        app = web.Application(middlewares=[self.authorize])
        common = dict(security=INBOX_AUTH, tags=("inbox",))
        app.router.add_get("/{user_id}/inbox", endpoint(Operation(
            "A user's inbox, newest first", {200: Reply("a page of messages", InboxPage), **FORBIDDEN, **UNAVAILABLE},
            path=InboxPath, query=PageQuery, **common), self.get_inbox))
        app.router.add_get("/{user_id}/inbox/stream", endpoint(Operation(
            "Server-Sent Events: each message, read and seen as the inbox applies them",
            {200: Reply("an event stream that stays open", media="text/event-stream"), **FORBIDDEN, **UNAVAILABLE,
             429: error(f"the inbox has {STREAMS_PER_USER} streams open already, or over the API key's rate")},
            path=InboxPath, query=InboxQuery, **common), self.stream), allow_head=False)
        for kind in (InboxEventKind.read, InboxEventKind.seen):
            app.router.add_post(f"/{{user_id}}/inbox/{{notification_id}}/{kind.value}", endpoint(Operation(
                f"Mark a message {kind.value} (an InboxEvent on herald.inbox)",
                {200: Reply(f"it was {kind.value} already", Marked), 202: Reply("Kafka has the event", Marked),
                 **NOT_FOUND, **FORBIDDEN, **UNAVAILABLE},
                path=MessagePath, query=InboxQuery, **common), self.marker(kind)))
        return app

    @web.middleware
    async def authorize(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Puts the (tenant, user) whose inbox this is in request[OWNER], or refuses the request."""
        if request.match_info.http_exception is not None:  # no route (a method none takes): aiohttp's 404 or 405
            return await handler(request)
        owner = self.owner(request)
        if isinstance(owner, web.Response):
            return owner
        if not self.inbox.ready.is_set():
            return json_error(503, "unavailable", f"the inbox is still reading {INBOX.name}",
                              headers={"Retry-After": "1"})
        request[OWNER] = owner
        return await handler(request)

    def owner(self, request: web.Request) -> Owner | web.Response:
        named, problems = owner_problems(request)
        if named is None:
            return invalid(problems)
        tenant, user = named
        presented = bearer(request)
        if "X-API-Key" in request.headers or same_key(presented, self.settings.api_key) or key_parts(presented):
            return self.server_caller(request, tenant, user)
        token = bearer(request) or request.query.get("token", "")
        try:
            signed_for = token_owner(self.settings.inbox.token_secret.get_secret_value(), token)
        except InvalidToken as exc:
            return json_error(401, "unauthorized", f"{exc}; send the API key, or a user's token as "
                                                   "Authorization: Bearer or ?token=")
        if signed_for[1] != user or tenant not in (None, signed_for[0]):
            return json_error(403, "forbidden", "the token is for another user's inbox")
        return signed_for

    def server_caller(self, request: web.Request, named: str | None, user: str) -> Owner | web.Response:
        """A service with an API key reads its own tenant's inboxes (`?tenant=` may only name that one)."""
        tenant = tenant_of(request)
        refused = refuse_other_tenant(tenant, named, "tenant")
        if refused is not None:
            return refused
        wait = self.limiter.wait(presented_key(request))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return json_error(429, "rate_limited", f"over the API key's rate; retry in {seconds} s",
                              headers={"Retry-After": str(seconds)})
        return tenant, user

    async def get_inbox(self, request: web.Request, inputs: Inputs) -> web.Response:
        return reply(InboxPage.model_validate(self.inbox.page(request[OWNER], inputs.query.limit, inputs.query.before)))

    def marker(self, kind: InboxEventKind) -> Any:
        async def mark(request: web.Request, inputs: Inputs) -> web.Response:
            return await self.mark(request, kind, inputs.path.notification_id)
        return mark

    async def mark(self, request: web.Request, kind: InboxEventKind, notification_id: uuid.UUID) -> web.Response:
        """Appends read or seen to herald.inbox (202 once the broker has it); 200 if it is already so."""
        owner = request[OWNER]
        message = self.inbox.find(owner, notification_id)
        if message is None:
            return json_error(404, "not_found", f"no message of notification {notification_id} in this inbox")
        read = message.read or kind == InboxEventKind.read
        answer = Marked(notification_id=notification_id, read=read, seen=True)
        if message.read if kind == InboxEventKind.read else message.seen:
            return reply(answer)  # nothing to append: a user cannot grow the log without bound
        value = self.serde.encode(InboxEvent.AVRO_NAME, event_record(kind, owner, notification_id).to_avro())
        try:
            await self.append(inbox_key(*owner), value)
        except (KafkaError, asyncio.TimeoutError) as exc:
            return json_error(503, "unavailable", f"Kafka did not take the event: {type(exc).__name__}",
                              headers={"Retry-After": "1"})
        return reply(answer, status=202)

    async def stream(self, request: web.Request, inputs: Inputs) -> web.StreamResponse:
        """Server-Sent Events: `message`, `read` and `seen` as the inbox applies them (each with `unread`),
        and a comment every KEEP_ALIVE_S. A stream that falls behind is ended; the client reconnects."""
        owner = request[OWNER]
        queue = self.inbox.subscribe(owner)
        if queue is None:
            return json_error(429, "too_many_streams", f"at most {STREAMS_PER_USER} streams per inbox")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(b": connected\n\n")
            while (event := await self.next_event(queue)) is not None:
                await response.write(event)
        except ConnectionResetError:  # the client went away
            pass
        finally:
            self.inbox.unsubscribe(owner, queue)
        return response

    @staticmethod
    async def next_event(queue: asyncio.Queue[bytes | None]) -> bytes | None:
        """The next event, or a keep-alive comment after KEEP_ALIVE_S (it also finds a client that left)."""
        try:
            return await asyncio.wait_for(queue.get(), KEEP_ALIVE_S)
        except asyncio.TimeoutError:
            return b": keep-alive\n\n"


def gateway_append(gateway: "Gateway") -> Append:
    """Appends with the gateway's own producer (acks=all, idempotent), made anew after a failure."""
    async def append(key: bytes, value: bytes) -> None:
        await gateway.kafka.send(INBOX.name, value, key, gateway.settings.inbox.produce_timeout_s)
    return append


def register(app: web.Application, gateway: "Gateway") -> None:
    """Mounts the inbox at /v1/users, and follows herald.inbox while `app` runs."""
    settings = gateway.settings
    if not settings.inbox.token_secret.get_secret_value():
        raise ValueError("HERALD_INBOX__TOKEN_SECRET is empty: the inbox will not run without one")
    inbox = Inbox(settings.inbox.max_messages, settings.inbox.retention_ms)
    api = InboxApi(settings, inbox, gateway_append(gateway), gateway.limiter, gateway.serde)
    users = api.web_app()
    Follower(lambda: InboxLog(settings, inbox)).attach(users)

    async def close_streams(app: web.Application) -> None:  # open streams would hold the shutdown until its timeout
        inbox.close_streams()

    users.on_shutdown.append(close_streams)
    app.add_subapp(USERS_PATH.rstrip("/"), users)
