"""Who is calling: `tenant_of(request)` is the one place the gateway learns a request's tenant.

For now there is one API key (`HERALD_API_KEY`, sent as `X-API-Key: <key>` or `Authorization:
Bearer <key>`) and one tenant, "default". Every endpoint that reads or writes a tenant's data takes
its tenant from here, never from the body, so tenants with keys of their own change only this module.
"""

import hmac
import json

from aiohttp import web

from streams.settings import Settings

SETTINGS = web.AppKey("settings", Settings)  # set on the gateway's application; subapps see it too
DEFAULT_TENANT = "default"


def presented_key(request: web.Request) -> str:
    return request.headers.get("X-API-Key") or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def same_key(presented: str, expected: str) -> bool:
    """In constant time (for keys of one length); never true for an empty key."""
    return bool(expected) and hmac.compare_digest(presented.encode("utf-8", "surrogatepass"),
                                                  expected.encode("utf-8", "surrogatepass"))


def tenant_of(request: web.Request) -> str:
    """The tenant whose API key the request carries; raises 401 (HTTPUnauthorized) for no key or a wrong one."""
    if not same_key(presented_key(request), request.config_dict[SETTINGS].api_key):
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthorized", "detail": "send the API key as X-API-Key or Authorization: Bearer"}),
            content_type="application/json")
    return DEFAULT_TENANT
