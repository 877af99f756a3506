"""Tenants' API keys, managed with the admin key (`herald tenants` calls these).

POST   /v1/admin/tenants/{tenant}/keys   a new key for the tenant: 201 with the key, shown this once
DELETE /v1/admin/keys/{key_id}           revoke a key: refused from the moment a gateway reads it
GET    /v1/admin/keys                    every key: id, tenant, created_at, revoked_at (never a secret)

Only with `admin_api_key` (X-API-Key or Authorization: Bearer); with none set, 403. A change is an
ApiKeyChanged on herald.tenants (compacted, keyed by key id), folded by every gateway; this one
folds it as soon as the broker has it, so the new key works here at once.
"""

import asyncio
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiokafka.errors import KafkaError

from gateway.auth import json_error, new_key, presented_key, same_key
from schemas.models import ApiKeyChanged
from streams.topics import TENANTS

if TYPE_CHECKING:
    from gateway.server import Gateway

ADMIN_PATH = "/v1/admin/"


def shown(record: dict[str, Any]) -> dict[str, Any]:
    return {"key_id": record["key_id"], "tenant": record["tenant"], "created_at": record["created_at"].isoformat(),
            "revoked_at": record["revoked_at"].isoformat() if record["revoked_at"] else None}


class AdminApi:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.keys = gateway.api_keys

    def web_app(self) -> web.Application:
        app = web.Application(middlewares=[self.authorize])
        app.router.add_post("/tenants/{tenant}/keys", self.create_key)
        app.router.add_delete("/keys/{key_id}", self.revoke_key)
        app.router.add_get("/keys", self.list_keys)
        return app

    @web.middleware
    async def authorize(self, request: web.Request, handler: Any) -> web.StreamResponse:
        admin_key = self.gateway.settings.admin_api_key
        if not admin_key:
            return json_error(403, "admin_disabled", "set HERALD_ADMIN_API_KEY to manage tenants' keys")
        if not same_key(presented_key(request), admin_key):
            return json_error(401, "unauthorized", "send the admin key as X-API-Key or Authorization: Bearer")
        if not self.keys.ready.is_set():
            return json_error(503, "unavailable", f"the gateway is still reading {TENANTS.name}",
                              headers={"Retry-After": "1"})
        return await handler(request)

    async def append(self, record: ApiKeyChanged) -> web.Response | None:
        """The record on herald.tenants, and folded here; the error response when Kafka did not take it."""
        try:
            await self.gateway.kafka.send(TENANTS.name, self.gateway.serde.encode_model(record), record.key_id.encode(),
                                          self.gateway.settings.gateway_produce_timeout_s)
        except (KafkaError, asyncio.TimeoutError) as exc:
            return json_error(503, "unavailable", f"Kafka did not take the change: {type(exc).__name__}",
                              headers={"Retry-After": "1"})
        self.keys.fold(record.to_avro())
        return None

    async def create_key(self, request: web.Request) -> web.Response:
        try:
            key, record = new_key(request.match_info["tenant"], datetime.now(timezone.utc))
        except ValueError as exc:
            return json_error(422, "invalid_request", [{"field": "tenant", "message": str(exc)}])
        failed = await self.append(record)
        if failed is not None:
            return failed
        return web.json_response({**shown(record.to_avro()), "api_key": key}, status=201)

    async def revoke_key(self, request: web.Request) -> web.Response:
        current = self.keys.keys.get(request.match_info["key_id"])
        if current is None:
            return json_error(404, "not_found", f"no key {request.match_info['key_id']!r}")
        if current["revoked_at"] is None:
            revoked = ApiKeyChanged.from_avro(current)
            revoked.revoked_at = datetime.now(timezone.utc)
            failed = await self.append(revoked)
            if failed is not None:
                return failed
        return web.json_response(shown(self.keys.keys[request.match_info["key_id"]]))

    async def list_keys(self, request: web.Request) -> web.Response:
        records = sorted(self.keys.keys.values(), key=lambda r: (r["tenant"], r["created_at"]))
        return web.json_response({"keys": [shown(r) for r in records]})


def register(app: web.Application, gateway: "Gateway") -> None:
    """Mounts the admin endpoints at /v1/admin."""
    app.add_subapp(ADMIN_PATH.rstrip("/"), AdminApi(gateway).web_app())
