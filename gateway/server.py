"""The HTTP gateway: JSON in, Avro on herald.requests out, 202 with the notification ids.

POST /v1/notifications          one NotificationRequest
POST /v1/notifications/batch    one NotificationBatch
GET  /v1/notifications/{id}     status and timeline (from ClickHouse)
DELETE /v1/notifications/{id}   cancel what of it is not sent yet (a scheduled notification)
GET  /health                    unauthenticated
GET  /dashboard…                the delivery dashboard (gateway/dashboard.py; the page is public, its data needs the key)
GET  /t/o/<token>, /t/c/<token> email open pixel and click redirect (gateway/tracking.py; signed tokens)
POST /v1/providers/twilio/status SMS status callbacks (gateway/callbacks.py; Twilio's signature)
GET  /metrics                   with `metrics_api_key` when it is set; else open only when `metrics_public`
GET, POST /v1/users/{user_id}/inbox…  a user's in-app inbox (gateway/inbox.py; an API key or the user's token)
/v1/admin/…                     tenants' API keys (gateway/admin.py; the admin key)
/v1/templates…, /v1/preferences…, /v1/scheduled  what the CLI does, tenant-scoped (gateway/api.py)
GET  /openapi.json              the OpenAPI 3.1 document of every route (gateway/openapi.py), unauthenticated
Everything else needs an API key (`X-API-Key: <key>` or `Authorization: Bearer <key>`), which says the
tenant the request acts for (gateway/auth.py, `tenant_of`; a body naming another tenant is 403),
and each key gets `gateway_rate_per_s` requests a second (a token bucket of `gateway_rate_burst`, per process).
Each route is registered with an Operation (gateway/openapi.py) whose models check its inputs.

What a request may hold is bounded here, before anything is produced (docs/architecture.md
section 5 has the table): string lengths per field, variables, metadata, recipients per batch.
A batch whose members would end up with the same idempotency key is refused as well.
"""

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from copy import copy
from datetime import datetime, timezone
from importlib.metadata import version
from typing import Annotated, Any, TypeVar

from aiohttp import web
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import AfterValidator, BaseModel, Field, ValidationError, create_model
from pydantic_core import PydanticCustomError

from agents.validate import MAX_SCHEDULE, MAX_TOTAL_BYTES, MAX_VARIABLE_BYTES, MAX_VARIABLES
from schemas.models import (BatchRecipient, Channel, NotificationBatch, NotificationCancelled, NotificationRequest,
                            Recipient, TimestampMillis)
from schemas.serde import AvroSerde
from streams.codec import bundle, default_serde
from streams.producers import RenewingProducer
from clickhouse_driver.errors import Error as ClickHouseError
from sinks.clickhouse_client import connect
from sinks.queries import tenants_of, timeline
from streams.ids import log_position, member_key, member_position, notification_id
from streams.logs import use_json_logs
from streams.settings import Settings, get_settings
from streams.tables import cancellation_key
from streams.topics import CANCELLATIONS, EVENTS, RECEIPTS, REQUESTS
from gateway import dashboard
from gateway.admin import ADMIN_PATH, register as register_admin
from gateway.auth import API_KEYS, ApiKeyLog, ApiKeys, presented_key, refuse_other_tenant, same_key, tenant_of
from gateway.callbacks import callback_routes
from gateway.errors import (MAX_PATH_PART_CHARS, REFUSED, ErrorBody, field_errors, invalid, json_error,
                            capped)
from gateway.openapi import (MAX_BODY_BYTES, NOT_FOUND, UNAVAILABLE, Inputs, Operation, Reply, document, endpoint,
                             error, reply)
from gateway.follow import Follower
from gateway.tracking import tracking_routes
from gateway.writes import unhonoured

ACCEPTED = Counter("herald_gateway_notifications_total", "Notifications accepted by the gateway", ["kind"])
# Paths that carry their own proof (a signed token or a provider's signature) instead of the API key.
# The in-app inbox (gateway/inbox.py) takes the API key or a user's signed token, and checks either itself.
USERS_PATH = "/v1/users/"
SIGNED_PATHS = ("/t/", "/v1/providers/", USERS_PATH, ADMIN_PATH)
# A request acts for its key's tenant (gateway/auth.py); one whose body names another is refused.
OTHER_TENANT = {403: error("the body names a tenant other than the API key's (`detail` names the field)")}
PUBLIC_PATHS = ("/health", "/openapi.json")


# --- What a request may hold ------------------------------------------------------------------------------
# Characters are Unicode code points. Variables are held to the validate stage's limits (agents/validate.py):
# how many, each value's size and their total size, in UTF-8 bytes as validate counts them.

MAX_KEY_CHARS = 256  # idempotency keys (request, batch, member), batch_id, template_id, user_id
MAX_NAME_CHARS = 128  # tenant, category, variable names, metadata keys
MAX_EMAIL_CHARS = 320
MAX_PHONE_CHARS = 32
MAX_LOCALE_CHARS = 35  # BCP 47
MAX_TIME_ZONE_CHARS = 64  # IANA
MAX_PUSH_TOKENS = 16
MAX_PUSH_TOKEN_CHARS = 4096
MAX_METADATA_ENTRIES = 64
MAX_METADATA_VALUE_CHARS = 1024
MAX_CHANNELS = len(Channel)

T = TypeVar("T")

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def no_control_characters(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise PydanticCustomError("control_characters",
                                  "must not contain control characters (U+0000-U+001F, U+007F-U+009F)")
    return value


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul", "must not contain NUL (U+0000)")
    return value


def within_schedule(value: datetime | None) -> datetime | None:
    """send_at at most MAX_SCHEDULE ahead (agents/validate.py holds Kafka producers to the same)."""
    if value is not None and value - datetime.now(timezone.utc) > MAX_SCHEDULE:
        raise PydanticCustomError("too_far", "is more than {days} days ahead", {"days": MAX_SCHEDULE.days})
    return value


def variable_value(value: str) -> str:
    size = len(value.encode())
    if size > MAX_VARIABLE_BYTES:
        raise PydanticCustomError("too_long", "is {size} bytes as UTF-8; at most {most}",
                                  {"size": size, "most": MAX_VARIABLE_BYTES})
    return no_nul(value)


def variables_total(variables: dict[str, str]) -> dict[str, str]:
    total = sum(len(value.encode()) for value in variables.values())
    if total > MAX_TOTAL_BYTES:
        raise PydanticCustomError("too_long", "the values total {total} bytes as UTF-8; at most {most}",
                                  {"total": total, "most": MAX_TOTAL_BYTES})
    return variables


def plain(most: int) -> Any:
    """An identifier-like string: at most `most` characters, no control characters."""
    return Annotated[str, Field(max_length=most), AfterValidator(no_control_characters)]


Variables = Annotated[dict[plain(MAX_NAME_CHARS), Annotated[str, AfterValidator(variable_value)]],
                      Field(max_length=MAX_VARIABLES), AfterValidator(variables_total)]
Metadata = Annotated[dict[plain(MAX_NAME_CHARS),
                          Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS), AfterValidator(no_nul)]],
                     Field(max_length=MAX_METADATA_ENTRIES)]
Channels = Annotated[list[Channel], Field(max_length=MAX_CHANNELS)]


def limited(model: type[BaseModel], **annotations: Any) -> Any:
    """`model` with these fields narrowed: the same fields, defaults and Avro record otherwise."""
    fields = {name: (annotation, copy(model.model_fields[name])) for name, annotation in annotations.items()}
    return create_model(f"Gateway{model.__name__}", __base__=model, **fields)


GatewayRecipient = limited(
    Recipient,
    user_id=plain(MAX_KEY_CHARS),
    email=plain(MAX_EMAIL_CHARS) | None,
    phone=plain(MAX_PHONE_CHARS) | None,
    push_tokens=Annotated[list[plain(MAX_PUSH_TOKEN_CHARS)], Field(max_length=MAX_PUSH_TOKENS)],
    locale=plain(MAX_LOCALE_CHARS) | None,
    time_zone=plain(MAX_TIME_ZONE_CHARS) | None,
)
GatewayBatchRecipient = limited(
    BatchRecipient,
    recipient=GatewayRecipient,
    variables=Variables,
    idempotency_key=plain(MAX_KEY_CHARS) | None,
)
COMMON_LIMITS: dict[str, Any] = dict(
    tenant=plain(MAX_NAME_CHARS),
    idempotency_key=plain(MAX_KEY_CHARS) | None,
    template_id=plain(MAX_KEY_CHARS),
    variables=Variables,
    channels=Channels,
    category=plain(MAX_NAME_CHARS),
    metadata=Metadata,
    send_at=Annotated[TimestampMillis | None, AfterValidator(within_schedule)],
)
GatewayRequest = limited(NotificationRequest, recipient=GatewayRecipient, **COMMON_LIMITS)


def batch_model(max_recipients: int) -> Any:
    """The batch as the gateway takes it, with at most `max_recipients` recipients (checked before they are)."""
    return limited(
        NotificationBatch,
        batch_id=plain(MAX_KEY_CHARS) | None,
        recipients=Annotated[list[GatewayBatchRecipient], Field(max_length=max_recipients)],
        **COMMON_LIMITS,
    )


# --- Responses ---------------------------------------------------------------------------------------------


def parse(model: type[BaseModel], body: bytes) -> BaseModel | web.Response:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        return json_error(422, "invalid_request", field_errors(exc))


def shown(key: str) -> str:
    return repr(key if len(key) <= MAX_PATH_PART_CHARS else f"{key[:MAX_PATH_PART_CHARS]}…")


def duplicate_member_keys(batch: NotificationBatch) -> list[dict[str, str]]:
    """Members whose idempotency key, as ingest derives it (`member_key`), an earlier member already has.

    Ingest would give both the same notification id; it accepts the first and rejects the others.
    """
    def whose(index: int, own: str | None) -> str:
        return f"recipients.{index}" + ("" if own else f" (derived from the batch key and index {index})")

    first: dict[str, tuple[int, str | None]] = {}
    problems = []
    for index, member in enumerate(batch.recipients):
        key = member_key(batch.idempotency_key, member.idempotency_key, index)
        if key is None:
            continue
        if key not in first:
            first[key] = (index, member.idempotency_key)
            continue
        earlier, earlier_own = first[key]
        problems.append({"field": f"recipients.{index}.idempotency_key",
                         "message": f"idempotency key {shown(key)} of {whose(index, member.idempotency_key)} is also "
                                    f"that of {whose(earlier, earlier_own)}; each recipient needs its own key"})
    return capped(problems)


def ids_of(request: NotificationRequest | NotificationBatch, position: str) -> list[uuid.UUID]:
    """The ids ingest will stamp on the notifications of this request (see streams/ids.py)."""
    if isinstance(request, NotificationRequest):
        return [notification_id(request.tenant, request.idempotency_key, position)]
    return [
        notification_id(request.tenant, member_key(request.idempotency_key, member.idempotency_key, index),
                        member_position(position, index))
        for index, member in enumerate(request.recipients)
    ]


def kafka_key(request: NotificationRequest | NotificationBatch) -> bytes:
    """Requests with an idempotency key are keyed by it, so ingest's repeat check sees them on one partition."""
    if request.idempotency_key:
        return request.idempotency_key.encode()
    if isinstance(request, NotificationRequest):
        return request.recipient.user_id.encode()
    return (request.batch_id or str(uuid.uuid4())).encode()


# --- Keys and rates ----------------------------------------------------------------------------------------


def own_tenant(request: web.Request, parsed: NotificationRequest | NotificationBatch) -> web.Response | None:
    """The request is its key's tenant's: a body naming another tenant is refused (403), one naming none
    gets the key's."""
    tenant = tenant_of(request)
    refused = refuse_other_tenant(tenant, parsed.tenant if "tenant" in parsed.model_fields_set else None, "tenant")
    parsed.tenant = tenant
    return refused

class RateLimiter:
    """A token bucket per API key, in this process's memory: `rate` requests a second, `burst` at once.

    Only keys that passed the key check get a bucket, so there are as many buckets as valid keys.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def wait(self, key: str) -> float:
        """0 when the request may go now (it took a token), else the seconds until a token is there."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, counted = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted) * self.rate)
        if tokens >= 1:
            self.buckets[key] = (tokens - 1, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


# --- Responses ---------------------------------------------------------------------------------------------


class NotificationPath(BaseModel):
    id: uuid.UUID
    """The notification's id, as the gateway answered it."""


class Accepted(BaseModel):
    notification_id: uuid.UUID


class BatchAccepted(BaseModel):
    notification_ids: list[uuid.UUID]


class TimelineEvent(BaseModel):
    at_ms: int
    """When, in milliseconds since 1970 (UTC)."""
    stage: str
    status: str
    channel: str
    """The channel, or "" for events about no channel (accepted, rejected, …)."""
    provider: str
    attempt: int
    error_code: str
    detail: str
    latency_ms: int | None


class Status(BaseModel):
    notification_id: uuid.UUID
    status: str
    """The latest event's status."""
    timeline: list[TimelineEvent]


class Cancelled(BaseModel):
    notification_id: uuid.UUID
    cancelled: bool


class Health(BaseModel):
    status: str


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (no such route, a method a route does not take) in the gateway's error body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason,
                          headers={k: v for k, v in exc.headers.items() if k == "Allow"})


class Gateway:
    def __init__(self, settings: Settings, serde: AvroSerde | None = None) -> None:
        if not settings.api_key:
            raise ValueError("HERALD_API_KEY is empty: the gateway will not run without an API key")
        if settings.gateway_max_batch_recipients < 1:
            raise ValueError("HERALD_GATEWAY_MAX_BATCH_RECIPIENTS must be at least 1")
        if settings.gateway_rate_per_s > 0 and settings.gateway_rate_burst < 1:
            raise ValueError("HERALD_GATEWAY_RATE_BURST must be at least 1 when HERALD_GATEWAY_RATE_PER_S is set")
        self.settings = settings
        self.serde = serde or default_serde()
        self.clickhouse = connect(settings)
        self.clickhouse_lock = asyncio.Lock()  # one native connection, one query at a time
        self.request_model = GatewayRequest
        self.batch_model = batch_model(settings.gateway_max_batch_recipients)
        self.limiter = RateLimiter(settings.gateway_rate_per_s, settings.gateway_rate_burst)
        self.kafka = RenewingProducer(settings, linger_ms=2)
        self.document: str | None = None  # /openapi.json
        self.api_keys = ApiKeys(settings.api_key)

    def web_app(self) -> web.Application:
        app = web.Application(middlewares=[errors_as_json, self.require_api_key], client_max_size=MAX_BODY_BYTES)
        app[API_KEYS] = self.api_keys
        Follower(lambda: ApiKeyLog(self.settings, self.api_keys, self.serde)).attach(app)
        unavailable = {**UNAVAILABLE}
        tags = ("notifications",)
        app.router.add_post("/v1/notifications", endpoint(Operation(
            "Send one notification", {202: Reply("Kafka has the request; the id ingest will stamp", Accepted),
                                      **OTHER_TENANT, **unavailable},
            body=self.request_model, tags=tags), self.post_notification))
        app.router.add_post("/v1/notifications/batch", endpoint(Operation(
            "Send one template to many recipients",
            {202: Reply("Kafka has the batch; the ids ingest will stamp, in the recipients' order", BatchAccepted),
             **OTHER_TENANT, **unavailable}, body=self.batch_model, tags=tags), self.post_batch))
        app.router.add_get("/v1/notifications/{id}", endpoint(Operation(
            "A notification's status and timeline (from ClickHouse)",
            {200: Reply("its lifecycle events, oldest first", Status), **NOT_FOUND, **unavailable},
            path=NotificationPath, tags=tags), self.get_notification))
        app.router.add_delete("/v1/notifications/{id}", endpoint(Operation(
            "Cancel what of a notification is not sent yet (a scheduled one, one waiting for a retry)",
            {202: Reply("Kafka has the cancellation", Cancelled), **NOT_FOUND, **unavailable}, path=NotificationPath,
            tags=("notifications", "scheduled")), self.cancel_notification))
        app.router.add_get("/health", endpoint(Operation("Liveness", {200: Reply("the gateway runs", Health)},
                                                         security=()), self.health))
        app.router.add_get("/metrics", endpoint(Operation(
            "Prometheus metrics", {200: Reply("the metrics, in Prometheus' text format", media="text/plain"),
                                   401: Reply("no metrics key, or a wrong one", ErrorBody),
                                   403: Reply("metrics are not served: no metrics key is set and they are not public",
                                              ErrorBody)},
            security=({"bearer": []}, {"apiKey": []}, {})), self.metrics))
        app.router.add_get("/openapi.json", endpoint(Operation(
            "This document", {200: Reply("the OpenAPI 3.1 document of every route", media="application/json")},
            security=()), self.openapi))
        app.router.add_routes(tracking_routes(self.settings, self.publish_event))
        app.router.add_routes(callback_routes(self.settings, self.publish_event, self.publish_receipt))
        from gateway.api import register as register_api  # here: gateway.api and gateway.inbox import this module
        from gateway.inbox import register as register_inbox

        register_inbox(app, self)
        self.api = register_api(app, self)
        dashboard.register(app, self)
        register_admin(app, self)
        app.on_cleanup.append(self.on_cleanup)
        return app

    async def on_cleanup(self, app: web.Application) -> None:
        await self.kafka.drop()
        self.clickhouse.disconnect()

    async def publish_event(self, event: dict[str, Any]) -> None:
        """A lifecycle event of the gateway's own (an open, a click) on herald.events, as a bundle of one.
        Best effort: a recipient's click is redirected even while Kafka is away."""
        key = event["notification_id"].bytes
        value = bundle(self.serde, [(key, self.serde.encode("LifecycleEvent", event))])
        try:
            await self.kafka.send(EVENTS.name, value, key, self.settings.gateway_produce_timeout_s)
        except (KafkaError, asyncio.TimeoutError):
            REFUSED.labels("event_unpublished").inc()

    async def publish_receipt(self, receipt: dict[str, Any]) -> None:
        """A provider's delivery report on herald.receipts; raises when Kafka does not take it."""
        key = f"{receipt['notification_id']}/{receipt['channel']}".encode()
        value = self.serde.encode("DeliveryReceipt", receipt)
        await self.kafka.send(RECEIPTS.name, value, key, self.settings.gateway_produce_timeout_s)

    @web.middleware
    async def require_api_key(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or request.path.startswith(SIGNED_PATHS) or dashboard.is_public(request.path):
            return await handler(request)
        if request.path == "/metrics":
            if self.settings.metrics_api_key:
                if not same_key(presented_key(request), self.settings.metrics_api_key):
                    return json_error(401, "unauthorized", "send the metrics key as X-API-Key or Authorization: Bearer")
            elif not self.settings.metrics_public:
                return json_error(403, "metrics_disabled",
                                  "set HERALD_METRICS_API_KEY (scrapers send it as a bearer token) "
                                  "or HERALD_METRICS_PUBLIC=true")
            return await handler(request)
        tenant_of(request)  # raises 401 (or 503) for a request without a valid key
        wait = self.limiter.wait(presented_key(request))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return json_error(429, "rate_limited",
                              f"over {self.settings.gateway_rate_per_s:g} requests a second for this API key; "
                              f"retry in {seconds} s", headers={"Retry-After": str(seconds)})
        return await handler(request)

    async def send(self, topic: str, key: bytes, value: bytes, what: str) -> RecordMetadata | web.Response:
        """One record on `topic` once the broker has it; else the error response (413 for a record over
        the size every producer and topic holds, 503 while Kafka does not take it)."""
        size = len(value) + len(key)
        if size > self.settings.max_record_bytes:
            return json_error(413, "too_large", f"the {what} is {size} bytes as Avro; at most {self.settings.max_record_bytes}")
        try:
            return await self.kafka.send(topic, value, key, self.settings.gateway_produce_timeout_s)
        except (KafkaError, asyncio.TimeoutError) as exc:  # never a 202 for a record the broker does not have
            return json_error(503, "unavailable", f"Kafka did not take the {what}: {type(exc).__name__}",
                              headers={"Retry-After": "1"})

    async def query(self, query: Callable[..., T], *args: Any) -> T | web.Response:
        """`query(client, *args)` on the gateway's ClickHouse connection; 503 while ClickHouse does not answer."""
        try:
            async with self.clickhouse_lock:
                return await asyncio.to_thread(query, self.clickhouse, *args)
        except (ClickHouseError, OSError) as exc:
            return json_error(503, "unavailable", f"ClickHouse did not answer: {type(exc).__name__}",
                              headers={"Retry-After": "1"})

    async def produce(self, request: NotificationRequest | NotificationBatch) -> list[uuid.UUID] | web.Response:
        """The ids ingest will stamp, once the broker has the request; else the error response."""
        if request.requested_at is None:
            request.requested_at = datetime.now(timezone.utc)
        metadata = await self.send(REQUESTS.name, kafka_key(request),
                                   self.serde.encode(request.AVRO_NAME, request.to_avro()), "request")
        if isinstance(metadata, web.Response):
            return metadata
        return ids_of(request, log_position(metadata.topic, metadata.partition, metadata.offset))

    async def post_notification(self, request: web.Request, inputs: Inputs) -> web.Response:
        refused = own_tenant(request, inputs.body)
        if refused is not None:
            return refused
        problems = unhonoured(inputs.body)
        if problems:
            return invalid(problems)
        ids = await self.produce(inputs.body)
        if isinstance(ids, web.Response):
            return ids
        ACCEPTED.labels("single").inc()
        return reply(Accepted(notification_id=ids[0]), status=202)

    async def post_batch(self, request: web.Request, inputs: Inputs) -> web.Response:
        parsed = inputs.body
        refused = own_tenant(request, parsed)
        if refused is not None:
            return refused
        if not parsed.recipients:
            return invalid([{"field": "recipients", "message": "at least one recipient"}])
        problems = duplicate_member_keys(parsed) or capped(unhonoured(parsed))
        if problems:
            return invalid(problems)
        ids = await self.produce(parsed)
        if isinstance(ids, web.Response):
            return ids
        ACCEPTED.labels("batch").inc(len(ids))
        return reply(BatchAccepted(notification_ids=ids), status=202)

    async def get_notification(self, request: web.Request, inputs: Inputs) -> web.Response:
        wanted = inputs.path.id
        events = await self.query(timeline, wanted, tenant_of(request))  # another tenant's: none
        if isinstance(events, web.Response):
            return events
        if not events:
            return json_error(404, "not_found", f"no events for notification {wanted} (yet)")
        return reply(Status(notification_id=wanted, status=events[-1]["status"], timeline=events))

    async def cancel_notification(self, request: web.Request, inputs: Inputs) -> web.Response:
        """A cancellation on herald.cancellations: deliver sends none of the notification's deliveries
        it has not sent yet (a scheduled one, one waiting for a retry). 202 once Kafka has it.

        In the name of the key's tenant, for its own notifications only: 404 when ClickHouse has the
        notification as another tenant's. One ClickHouse does not know yet (just sent) is cancelled
        too; deliver honours a cancellation only for a notification of the tenant that made it."""
        wanted = inputs.path.id
        tenant = tenant_of(request)
        owners = await self.query(tenants_of, wanted)
        if isinstance(owners, web.Response):
            return owners
        if owners and tenant not in owners:
            return json_error(404, "not_found", f"no events for notification {wanted} (yet)")
        record = NotificationCancelled(notification_id=wanted, tenant=tenant, cancelled_at=datetime.now(timezone.utc))
        sent = await self.send(CANCELLATIONS.name, cancellation_key(tenant, wanted), self.serde.encode_model(record),
                               "cancellation")
        if isinstance(sent, web.Response):
            return sent
        return reply(Cancelled(notification_id=wanted, cancelled=True), status=202)

    async def health(self, request: web.Request, inputs: Inputs) -> web.Response:
        return reply(Health(status="ok"))

    async def metrics(self, request: web.Request, inputs: Inputs) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request, inputs: Inputs) -> web.Response:
        if self.document is None:  # made on its first request: the routes are fixed by then
            self.document = json.dumps(document(request.app, "Herald gateway", version("herald")))
        return web.Response(text=self.document, content_type="application/json")


def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    if settings.log_format == "json":
        logging.basicConfig(level=logging.INFO)
        use_json_logs("gateway")
    web.run_app(Gateway(settings).web_app(), host=settings.gateway_host, port=settings.gateway_port,
                print=None, access_log=None)
