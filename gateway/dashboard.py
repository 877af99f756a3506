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

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.auth import tenant_of
from gateway.errors import json_error
from gateway.openapi import NOT_FOUND, UNAVAILABLE, Inputs, Operation, Reply, endpoint, error, reply
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


class SummaryQuery(BaseModel):
    minutes: int = Field(DEFAULT_MINUTES, ge=1, le=MAX_MINUTES)
    """The period, back from now."""


class Failure(BaseModel):
    channel: str
    status: str
    reason: str
    count: int


class Summary(BaseModel):
    """What the dashboard draws (sinks/rollups.py `summary`)."""

    tenant: str
    since: int
    until: int
    accepted: int
    funnel: dict[str, dict[str, int]]
    """Per channel, how many reached each step."""
    failures: list[Failure]
    minutes: list[int]
    """Each minute of the period, epoch seconds: the x axis of the series."""
    throughput: dict[str, list[int]]
    latency: dict[str, list[float | None]]
    """p50, p95, p99 in milliseconds per minute; null where a minute sent nothing."""


class Dashboard:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway

    async def page(self, request: web.Request, inputs: Inputs) -> web.StreamResponse:
        if not BUNDLE.exists():  # a checkout whose `make assets` has not run: say so rather than a blank page
            return json_error(503, "dashboard_not_built", "run `make assets` (npm) first")
        return web.FileResponse(STATIC_DIR / "index.html")

    async def summary(self, request: web.Request, inputs: Inputs) -> web.Response:
        found = await self.gateway.query(summary, tenant_of(request), inputs.query.minutes * 60)
        return found if isinstance(found, web.Response) else reply(Summary.model_validate(found))

    async def notification(self, request: web.Request, inputs: Inputs) -> web.Response:
        from gateway.server import Status  # here: gateway.server imports this module

        wanted = inputs.path.id
        events = await self.gateway.query(timeline, wanted, tenant_of(request))
        if isinstance(events, web.Response):
            return events
        if not events:
            return json_error(404, "not_found", f"no events for notification {wanted}")
        return reply(Status(notification_id=wanted, status=events[-1]["status"], timeline=events))


def register(app: web.Application, gateway: "Gateway") -> None:
    from gateway.server import NotificationPath, Status  # here: gateway.server imports this module

    dashboard = Dashboard(gateway)
    tags = ("dashboard",)
    app.router.add_get(PAGE_PATH, endpoint(Operation(
        "The delivery dashboard's page (it asks for the API key, and sends it on its fetch() calls)",
        {200: Reply("the page", media="text/html"), 503: error("the page's bundle is not built (`make assets`)")},
        security=(), tags=tags), dashboard.page))
    app.router.add_static(STATIC_PREFIX, STATIC_DIR)  # files, not an API: gateway/openapi.py leaves it out
    app.router.add_get("/dashboard/api/summary", endpoint(Operation(
        "Funnel, failures, throughput and latency of the caller's tenant (from the per-minute rollups)",
        {200: Reply("what the dashboard draws", Summary), **UNAVAILABLE}, query=SummaryQuery, tags=tags),
        dashboard.summary))
    app.router.add_get("/dashboard/api/notifications/{id}", endpoint(Operation(
        "One notification's timeline, when it is the caller's tenant's",
        {200: Reply("its lifecycle events, oldest first", Status), **NOT_FOUND, **UNAVAILABLE},
        path=NotificationPath, tags=tags), dashboard.notification))
