"""Who is calling: the tenant of the API key a request carries.

A request's tenant is its key's, never what its body or query says (`tenant_of`). Two kinds of key:
- `api_key` (settings): the key of tenant "default", as before tenants.
- a tenant's own key, `hk_<key_id>_<secret>`: made by `herald tenants create-key` (the admin
  endpoints, gateway/admin.py) and kept as an ApiKeyChanged event on herald.tenants, which every
  gateway folds (`ApiKeyLog`). Only the SHA-256 of the secret is stored. The secret is 32 random
  bytes, so a fast hash is enough: there is nothing to guess, and a slow password hash (bcrypt,
  argon2) would only cost every request milliseconds. The key id finds the record; the hashes are
  compared in constant time.
"""

import asyncio
import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.errors import json_error
from schemas.models import ApiKeyChanged
from schemas.serde import AvroSerde
from streams.settings import Settings
from streams.tables import DEFAULT_TENANT, FoldedTable, valid_tenant
from streams.topics import TENANTS

KEY_PREFIX = "hk_"
SECRET_BYTES = 32
ERRORS: dict[int, type[web.HTTPException]] = {401: web.HTTPUnauthorized, 503: web.HTTPServiceUnavailable}
TENANT = web.RequestKey("tenant", str)  # the tenant of the request's key, once tenant_of found it


def http_error(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> web.HTTPException:
    """json_error's answer as an exception, for code that must raise it (tenant_of)."""
    response = json_error(status, error, detail, headers)
    return ERRORS[status](headers=headers, text=response.text, content_type="application/json")


# --- Keys --------------------------------------------------------------------------------------------------


def presented_key(request: web.Request) -> str:
    return request.headers.get("X-API-Key") or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def same_key(presented: str, expected: str) -> bool:
    """In constant time (for keys of one length); never true for an empty key."""
    return bool(expected) and hmac.compare_digest(presented.encode("utf-8", "surrogatepass"),
                                                  expected.encode("utf-8", "surrogatepass"))


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_key(tenant: str, now: datetime) -> tuple[str, ApiKeyChanged]:
    """A new key for `tenant`: the key to hand out (once; it is stored nowhere) and its record."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(SECRET_BYTES)
    record = ApiKeyChanged(key_id=key_id, tenant=valid_tenant(tenant), secret_sha256=secret_hash(secret),
                           created_at=now)
    return f"{KEY_PREFIX}{key_id}_{secret}", record


def key_parts(presented: str) -> tuple[str, str] | None:
    """(key id, secret) of a tenant key; None for anything else. The id is hex, so the first '_' ends it."""
    if not presented.startswith(KEY_PREFIX):
        return None
    key_id, _, secret = presented.removeprefix(KEY_PREFIX).partition("_")
    return (key_id, secret) if key_id and secret else None


class ApiKeys:
    """The keys a gateway accepts: tenants' keys by id (folded from herald.tenants, revoked ones kept
    so `herald tenants list` shows them), and the default tenant's from settings."""

    def __init__(self, default_key: str) -> None:
        self.default_key = default_key
        self.keys: dict[str, dict[str, Any]] = {}  # key id → ApiKeyChanged
        self.ready = asyncio.Event()  # set once the fold caught up with herald.tenants

    def fold(self, record: dict[str, Any]) -> None:
        self.keys[record["key_id"]] = record

    def tenant(self, presented: str) -> str | None:
        """The tenant of a valid key; None for an unknown, wrong or revoked one."""
        if same_key(presented, self.default_key):
            return DEFAULT_TENANT
        parts = key_parts(presented)
        record = self.keys.get(parts[0]) if parts else None
        if parts is None or record is None or record["revoked_at"] is not None:
            return None
        return record["tenant"] if hmac.compare_digest(secret_hash(parts[1]), record["secret_sha256"]) else None


class ApiKeyLog(FoldedTable):
    """herald.tenants, folded into ApiKeys from the beginning and tailed."""

    spec = TENANTS

    def __init__(self, settings: Settings, keys: ApiKeys, serde: AvroSerde | None = None, **kwargs: Any) -> None:
        super().__init__(settings, serde, **kwargs)
        self.keys = keys
        self.ready = keys.ready

    def fold(self, key: bytes, record: dict[str, Any] | None) -> None:
        if record is None:  # compaction keeps a key's latest record; a tombstone forgets the key altogether
            self.keys.keys.pop(key.decode(errors="replace"), None)
        else:
            self.keys.fold(record)

    def __len__(self) -> int:
        return len(self.keys.keys)


API_KEYS = web.AppKey("api_keys", ApiKeys)


def tenant_of(request: web.Request) -> str:
    """The tenant of the request's API key (`X-API-Key` or `Authorization: Bearer`). Raises 401 for no,
    an unknown or a revoked key; 503 for a tenant key while this gateway is still reading herald.tenants."""
    if TENANT in request:
        return request[TENANT]
    keys = request.config_dict[API_KEYS]
    presented = presented_key(request)
    tenant = keys.tenant(presented)
    if tenant is None:
        if key_parts(presented) and not keys.ready.is_set():
            raise http_error(503, "unavailable", f"the gateway is still reading {TENANTS.name}",
                             headers={"Retry-After": "1"})
        raise http_error(401, "unauthorized", "send an API key as X-API-Key or Authorization: Bearer")
    request[TENANT] = tenant
    return tenant


def refuse_other_tenant(tenant: str, named: str | None, field: str) -> web.Response | None:
    """403 when a request names a tenant other than its key's (`field` says where); None when it does not."""
    if named is None or named == tenant:
        return None
    return json_error(403, "forbidden", [{"field": field, "message": f"this API key is tenant {tenant!r}'s; "
                                                                      f"it cannot act for tenant {named!r}"}])
