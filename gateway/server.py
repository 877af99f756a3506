"""The HTTP gateway: JSON in, Avro on herald.requests out, 202 with the notification ids.

POST /v1/notifications          one NotificationRequest
POST /v1/notifications/batch    one NotificationBatch
GET  /v1/notifications/{id}     status and timeline (from ClickHouse)
GET  /health, GET /metrics      unauthenticated; everything else needs the API key
                                (`X-API-Key: <key>` or `Authorization: Bearer <key>`).
"""

import asyncio
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel, ValidationError

from schemas.models import NotificationBatch, NotificationRequest
from schemas.serde import AvroSerde, default_serde
from sinks.clickhouse_client import connect
from sinks.queries import timeline
from streams.ids import log_position, member_key, member_position, notification_id
from streams.settings import Settings, get_settings
from streams.topics import REQUESTS

OPEN_PATHS = {"/health", "/metrics"}
ACCEPTED = Counter("herald_gateway_notifications_total", "Notifications accepted by the gateway", ["kind"])
REFUSED = Counter("herald_gateway_refused_total", "Requests refused by the gateway", ["reason"])


def json_error(status: int, error: str, detail: Any) -> web.Response:
    REFUSED.labels(error).inc()
    return web.json_response({"error": error, "detail": detail}, status=status)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]} for err in exc.errors()]


def parse(model: type[BaseModel], body: bytes) -> BaseModel | web.Response:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        return json_error(422, "invalid_request", field_errors(exc))


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


class Gateway:
    def __init__(self, settings: Settings, serde: AvroSerde | None = None) -> None:
        if not settings.api_key:
            raise ValueError("HERALD_API_KEY is empty: the gateway will not run without an API key")
        self.settings = settings
        self.serde = serde or default_serde()
        self.clickhouse = connect(settings)
        self.clickhouse_lock = asyncio.Lock()  # one native connection, one query at a time

    def web_app(self) -> web.Application:
        app = web.Application(middlewares=[self.require_api_key], client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/notifications", self.post_notification)
        app.router.add_post("/v1/notifications/batch", self.post_batch)
        app.router.add_get("/v1/notifications/{id}", self.get_notification)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.on_startup.append(self.on_startup)
        app.on_cleanup.append(self.on_cleanup)
        return app

    async def on_startup(self, app: web.Application) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                         enable_idempotence=True, linger_ms=2,
                                         max_request_size=self.settings.max_message_bytes)
        await self.producer.start()

    async def on_cleanup(self, app: web.Application) -> None:
        await self.producer.stop()
        self.clickhouse.disconnect()

    @web.middleware
    async def require_api_key(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        presented = request.headers.get("X-API-Key") or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if presented != self.settings.api_key:
            return json_error(401, "unauthorized", "send the API key as X-API-Key or Authorization: Bearer")
        return await handler(request)

    async def produce(self, request: NotificationRequest | NotificationBatch) -> list[uuid.UUID] | web.Response:
        """The ids ingest will stamp, once the broker has the request; else the error response."""
        if request.requested_at is None:
            request.requested_at = datetime.now(timezone.utc)
        value = self.serde.encode(request.AVRO_NAME, request.to_avro())
        key = kafka_key(request)
        size = len(value) + len(key or b"")
        if size > self.settings.max_record_bytes:  # the one size limit every producer and topic holds
            return json_error(413, "too_large", f"the request is {size} bytes as Avro; at most {self.settings.max_record_bytes}")
        try:
            metadata = await self.producer.send_and_wait(REQUESTS.name, value, key=key)
        except KafkaError as exc:  # never a 202 for a request the broker does not have
            return json_error(503, "unavailable", f"Kafka did not take the request: {type(exc).__name__}")
        return ids_of(request, log_position(metadata.topic, metadata.partition, metadata.offset))

    async def post_notification(self, request: web.Request) -> web.Response:
        parsed = parse(NotificationRequest, await request.read())
        if isinstance(parsed, web.Response):
            return parsed
        ids = await self.produce(parsed)
        if isinstance(ids, web.Response):
            return ids
        ACCEPTED.labels("single").inc()
        return web.json_response({"notification_id": str(ids[0])}, status=202)

    async def post_batch(self, request: web.Request) -> web.Response:
        parsed = parse(NotificationBatch, await request.read())
        if isinstance(parsed, web.Response):
            return parsed
        if not parsed.recipients:
            return json_error(422, "invalid_request", [{"field": "recipients", "message": "at least one recipient"}])
        ids = await self.produce(parsed)
        if isinstance(ids, web.Response):
            return ids
        ACCEPTED.labels("batch").inc(len(ids))
        return web.json_response({"notification_ids": [str(i) for i in ids]}, status=202)

    async def get_notification(self, request: web.Request) -> web.Response:
        try:
            wanted = uuid.UUID(request.match_info["id"])
        except ValueError:
            return json_error(422, "invalid_id", "notification id must be a UUID")
        async with self.clickhouse_lock:
            events = await asyncio.to_thread(timeline, self.clickhouse, wanted)
        if not events:
            return json_error(404, "not_found", f"no events for notification {wanted} (yet)")
        return web.json_response(
            {"notification_id": str(wanted), "status": events[-1]["status"], "timeline": events},
            dumps=lambda obj: json.dumps(obj, default=str),
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    web.run_app(Gateway(settings).web_app(), host=settings.gateway_host, port=settings.gateway_port,
                print=None, access_log=None)
