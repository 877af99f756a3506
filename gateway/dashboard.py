"""The delivery dashboard at /dashboard: a static page (gateway/static) whose charts read two JSON endpoints.

GET /dashboard                              the page; public (it holds no data)
GET /dashboard/static/…                     its script and styles, bundled with uPlot by `make assets`; public
GET /dashboard/api/summary?minutes=N        funnel, failures, throughput and latency of the caller's tenant
GET /dashboard/api/notifications/{id}       one notification's timeline, when it is the caller's tenant's

A browser cannot send a header when it opens a page, so the page is public and asks for the API key,
keeps it in sessionStorage (gone when the tab closes) and sends it as X-API-Key on its fetch() calls;
the API endpoints take it like every other endpoint (the gateway's key check and rate limit, then
`tenant_of`). The figures come from the per-minute rollups (sinks/rollups.py), not the raw events.
"""

import asyncio
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.auth import tenant_of
from sinks.queries import timeline
from sinks.rollups import summary

if TYPE_CHECKING:
    from gateway.server import Gateway

STATIC_DIR = Path(__file__).parent / "static"
BUNDLE = STATIC_DIR / "dist" / "dashboard.js"
PAGE_PATH = "/dashboard"
STATIC_PREFIX = "/dashboard/static/"
DEFAULT_MINUTES = 60
MAX_MINUTES = 7 * 24 * 60


def is_public(path: str) -> bool:
    """The page and its assets: no tenant data, so no key (the gateway's key check lets them through)."""
    return path == PAGE_PATH or path.startswith(STATIC_PREFIX)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


class Dashboard:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway

    async def query(self, function: Any, *args: Any) -> Any:
        async with self.gateway.clickhouse_lock:  # the gateway's one native connection
            return await asyncio.to_thread(function, self.gateway.clickhouse, *args)

    async def page(self, request: web.Request) -> web.StreamResponse:
        if not BUNDLE.exists():  # a checkout whose `make assets` has not run: say so rather than a blank page
            return web.json_response({"error": "dashboard_not_built", "detail": "run `make assets` (npm) first"},
                                     status=503)
        return web.FileResponse(STATIC_DIR / "index.html")

    async def summary(self, request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        try:
            minutes = int(request.query.get("minutes", DEFAULT_MINUTES))
        except ValueError:
            minutes = 0
        if not 1 <= minutes <= MAX_MINUTES:
            return web.json_response({"error": "invalid_minutes", "detail": f"minutes: 1 to {MAX_MINUTES}"},
                                     status=422)
        return web.json_response(await self.query(summary, tenant, minutes * 60), dumps=dumps)

    async def notification(self, request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        try:
            wanted = uuid.UUID(request.match_info["id"].strip())
        except ValueError:
            return web.json_response({"error": "invalid_id", "detail": "a notification id is a UUID"}, status=422)
        events = await self.query(timeline, wanted, tenant)
        if not events:
            return web.json_response({"error": "not_found", "detail": f"no events for notification {wanted}"},
                                     status=404)
        return web.json_response({"notification_id": str(wanted), "timeline": events}, dumps=dumps)


def register(app: web.Application, gateway: "Gateway") -> None:
    dashboard = Dashboard(gateway)
    app.router.add_get(PAGE_PATH, dashboard.page)
    app.router.add_static(STATIC_PREFIX, STATIC_DIR)
    app.router.add_get("/dashboard/api/summary", dashboard.summary)
    app.router.add_get("/dashboard/api/notifications/{id}", dashboard.notification)
