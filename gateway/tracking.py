"""Email opens and clicks: the gateway's side of agents/channels/tracking.py.

GET /t/o/<token>   the open pixel: an `opened` lifecycle event, and a 1×1 GIF whatever the token
GET /t/c/<token>   a click: a `clicked` event (the URL in its detail), then 302 to the URL the token
                   names; a token that does not verify is 400 and redirects nowhere (no open redirect)

Neither needs the API key (a recipient's mail client calls them): the token's signature is the proof.
"""

import base64
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from agents.channels.tracking import safe_target, verify
from gateway.openapi import Inputs, Operation, Reply, endpoint, error
from streams.stage import now_utc
from streams.settings import Settings

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, private"}

# Publishes one lifecycle event (the gateway's producer); raises when Kafka does not take it.
Publish = Callable[[dict[str, Any]], Awaitable[None]]


def tracking_event(facts: dict[str, Any], status: str, detail: str | None) -> dict[str, Any]:
    notification_id = uuid.UUID(facts["n"])
    return {
        # One event per notification and status (and URL): a mail client that loads the pixel ten
        # times, or a user who clicks one link twice, counts once in ClickHouse.
        "event_id": uuid.uuid5(notification_id, f"gateway/{status}/email/{detail or ''}"),
        "notification_id": notification_id, "tenant": facts.get("t") or "default", "status": status,
        "stage": "gateway", "channel": "email", "provider": None, "template_id": facts.get("tp"),
        "category": facts.get("c"), "priority": "normal", "attempt": 0, "error_code": None,
        "detail": detail, "latency_ms": None, "occurred_at": now_utc(),
    }


class TokenPath(BaseModel):
    token: str
    """The signed token the email's link or pixel carries."""


OPEN = Operation("An email's open pixel", {200: Reply("a 1×1 GIF, whatever the token", media="image/gif")},
                 path=TokenPath, security=(), tags=("tracking",))
CLICK = Operation("A click in an email: recorded, then redirected to its URL",
                  {302: Reply("to the URL the token names"), 400: error("the link was not made by Herald")},
                  path=TokenPath, security=(), tags=("tracking",))


def tracking_routes(settings: Settings, publish: Publish) -> list[web.RouteDef]:
    secret = settings.tracking_secret.get_secret_value()

    async def opened(request: web.Request, inputs: Inputs) -> web.Response:
        facts = verify(secret, request.match_info["token"])
        if facts is not None:
            await publish(tracking_event(facts, "opened", None))
        return web.Response(body=PIXEL, content_type="image/gif", headers=NO_STORE)

    async def clicked(request: web.Request, inputs: Inputs) -> web.Response:
        facts = verify(secret, request.match_info["token"])
        if facts is None or not safe_target(facts.get("u")):
            return web.json_response({"error": "invalid_link", "detail": "this link was not made by Herald"},
                                     status=400, headers=NO_STORE)
        await publish(tracking_event(facts, "clicked", facts["u"]))
        raise web.HTTPFound(facts["u"], headers=NO_STORE)

    return [web.get("/t/o/{token}", endpoint(OPEN, opened)), web.get("/t/c/{token}", endpoint(CLICK, clicked))]
