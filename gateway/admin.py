"""Tenants' API keys, managed with the admin key (`herald tenants` calls these).

POST   /v1/admin/tenants/{tenant}/keys   a new key for the tenant: 201 with the key, shown this once
DELETE /v1/admin/keys/{key_id}           revoke a key: refused from the moment a gateway reads it
GET    /v1/admin/keys                    every key: id, tenant, created_at, revoked_at (never a secret)

Only with `admin_api_key` (X-API-Key or Authorization: Bearer); with none set, 403. A change is an
ApiKeyChanged on herald.tenants (compacted, keyed by key id), folded by every gateway; this one
folds it as soon as the broker has it, so the new key works here at once.
"""

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel

from gateway.auth import new_key, presented_key, same_key
from gateway.errors import invalid, json_error, problem
from gateway.openapi import NOT_FOUND, UNAVAILABLE, Handler, Inputs, Operation, Reply, endpoint, error, reply
from schemas.models import ApiKeyChanged
from streams.topics import TENANTS

if TYPE_CHECKING:
    from gateway.server import Gateway

ADMIN_PATH = "/v1/admin/"
ADMIN_ONLY = {401: error("no admin key, or a wrong one"), 403: error("no admin key is set: tenants' keys are not managed")}


class TenantPath(BaseModel):
    tenant: str
    """The tenant the key is for: letters, digits, '.', '_' and '-'."""


class KeyPath(BaseModel):
    key_id: str
    """The key's id (the part after `hk_`)."""


class Key(BaseModel):
    key_id: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None


class NewKey(Key):
    api_key: str
    """The key itself, `hk_<key_id>_<secret>`: shown this once, Herald keeps only a hash of it."""


class KeyList(BaseModel):
    keys: list[Key]


def shown(record: dict[str, Any]) -> Key:
    return Key(key_id=record["key_id"], tenant=record["tenant"], created_at=record["created_at"],
               revoked_at=record["revoked_at"])


class AdminApi:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.keys = gateway.api_keys

    def register(self, app: web.Application) -> None:
        tags = ("tenants",)
        app.router.add_post(f"{ADMIN_PATH}tenants/{{tenant}}/keys", endpoint(Operation(
            "Make an API key for a tenant", {201: Reply("the key, shown this once", NewKey), **ADMIN_ONLY,
                                             **UNAVAILABLE}, path=TenantPath, tags=tags), self.admin(self.create_key)))
        app.router.add_delete(f"{ADMIN_PATH}keys/{{key_id}}", endpoint(Operation(
            "Revoke an API key", {200: Reply("the key, revoked", Key), **ADMIN_ONLY, **NOT_FOUND, **UNAVAILABLE},
            path=KeyPath, tags=tags), self.admin(self.revoke_key)))
        app.router.add_get(f"{ADMIN_PATH}keys", endpoint(Operation(
            "Every tenant's API keys (never a secret)", {200: Reply("the keys", KeyList), **ADMIN_ONLY, **UNAVAILABLE},
            tags=tags), self.admin(self.list_keys)))

    def admin(self, handler: Handler) -> Handler:
        """`handler`, for a request with the admin key once this gateway has read herald.tenants."""
        async def checked(request: web.Request, inputs: Inputs) -> web.StreamResponse:
            admin_key = self.gateway.settings.admin_api_key
            if not admin_key:
                return json_error(403, "admin_disabled", "set HERALD_ADMIN_API_KEY to manage tenants' keys")
            if not same_key(presented_key(request), admin_key):
                return json_error(401, "unauthorized", "send the admin key as X-API-Key or Authorization: Bearer")
            if not self.keys.ready.is_set():
                return json_error(503, "unavailable", f"the gateway is still reading {TENANTS.name}",
                                  headers={"Retry-After": "1"})
            return await handler(request, inputs)
        return checked

    async def append(self, record: ApiKeyChanged) -> web.Response | None:
        """The record on herald.tenants, and folded here; the error response when Kafka did not take it."""
        sent = await self.gateway.send(TENANTS.name, record.key_id.encode(), self.gateway.serde.encode_model(record),
                                       "key change")
        if isinstance(sent, web.Response):
            return sent
        self.keys.fold(record.to_avro())
        return None

    async def create_key(self, request: web.Request, inputs: Inputs) -> web.Response:
        try:
            key, record = new_key(inputs.path.tenant, datetime.now(timezone.utc))
        except ValueError as exc:
            return invalid([problem("tenant", str(exc))])
        return await self.append(record) or reply(NewKey(**shown(record.to_avro()).model_dump(), api_key=key),
                                                  status=201)

    async def revoke_key(self, request: web.Request, inputs: Inputs) -> web.Response:
        current = self.keys.keys.get(inputs.path.key_id)
        if current is None:
            return json_error(404, "not_found", f"no key {inputs.path.key_id!r}")
        if current["revoked_at"] is None:
            revoked = ApiKeyChanged.from_avro(current)
            revoked.revoked_at = datetime.now(timezone.utc)
            failed = await self.append(revoked)
            if failed is not None:
                return failed
        return reply(shown(self.keys.keys[inputs.path.key_id]))

    async def list_keys(self, request: web.Request, inputs: Inputs) -> web.Response:
        records = sorted(self.keys.keys.values(), key=lambda r: (r["tenant"], r["created_at"]))
        return reply(KeyList(keys=[shown(r) for r in records]))


def register(app: web.Application, gateway: "Gateway") -> None:
    """The admin endpoints, on the gateway's application (they check the admin key themselves)."""
    AdminApi(gateway).register(app)
