"""The peers process: one aiohttp app with every HTTP provider's routes, receipts, and fault injection.

Fault injection, for tests and chaos runs (the same for every provider):

    POST   /_faults/<provider>  {"status": 503, "count": 3, "retry_after_s": 2, "delay_s": 0,
                                 "dead": ["+15550001111"], "silent": ["+15550002222"], "scope": "AC…"}
    DELETE /_faults/<provider>  back to healthy
    GET    /_faults/<provider>  what is set

`status` answers the next `count` requests (or every request when `count` is absent) with that status
and the provider's own error body for it; `retry_after_s` adds a Retry-After header; `delay_s` stalls
each request first (a timeout, for a client that waits less); `scope` limits the fault to one scope
of the provider's (Twilio: an account SID, so a primary account fails while a secondary works);
`dead` lists addresses the provider answers as dead (unregistered token, unreachable number), each
in the provider's own way; `silent` lists addresses it accepts and then never reports on (a handset
that stays off: no delivery report). A request the peer answered with a fault is
not stored.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from streams.settings import Settings
from tooling.mailbox import read_lines

RECEIPTS = "received.jsonl"


@dataclass
class Fault:
    status: int | None = None
    count: int | None = None  # None: every request
    retry_after_s: float | None = None
    delay_s: float = 0.0
    dead: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    # Only requests in this scope fail (a provider module says what a scope is: Twilio's account SID).
    scope: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "Fault":
        return cls(status=body.get("status"), count=body.get("count"), retry_after_s=body.get("retry_after_s"),
                   delay_s=float(body.get("delay_s") or 0.0), dead=set(body.get("dead") or ()), silent=set(body.get("silent") or ()),
                   scope=body.get("scope"))

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.count, "retry_after_s": self.retry_after_s,
                "delay_s": self.delay_s, "dead": sorted(self.dead), "silent": sorted(self.silent),
                "scope": self.scope}


class Peer:
    """One provider's receipts and faults; its module's handlers call `fault()` and `record()`."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.faults = Fault()
        self.seen: set[str] = set()  # provider-side idempotency keys already stored

    async def fault(self, scope: str | None = None) -> int | None:
        """The status to fail this request with, if a fault is set (after its delay); None: serve it."""
        faults = self.faults
        if faults.scope is not None and scope != faults.scope:
            return None
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.status is None or faults.count == 0:
            return None
        if faults.count is not None:
            faults.count -= 1
        return faults.status

    def is_dead(self, address: str) -> bool:
        return address in self.faults.dead

    def is_silent(self, address: str) -> bool:
        return address in self.faults.silent

    def retry_after_headers(self) -> dict[str, str]:
        after = self.faults.retry_after_s
        return {"Retry-After": f"{after:g}"} if after is not None else {}

    def record(self, receipt: dict[str, Any], key: str | None = None, notification_id: str | None = None) -> bool:
        """Store what was received (one JSON line); a repeat of `key` is noted as a duplicate, like a
        provider honouring an idempotency key. Returns whether it was new. `notification_id`, when the
        request carries one (each provider somewhere of its own), is kept at the top of the line so
        tests and the bench count deliveries the same way for every provider."""
        duplicate = key is not None and key in self.seen
        if key is not None:
            self.seen.add(key)
        line = json.dumps({**receipt, "notification_id": notification_id, "received_ms": time.time() * 1000,
                           "duplicate": duplicate}, default=str)
        with (self.directory / RECEIPTS).open("a") as out:
            out.write(line + "\n")
        return not duplicate


def hex_id(value: Any) -> str | None:
    """A notification id sent as 32 hex digits (Herald's FCM collapse key, its web push Topic), as a UUID string."""
    try:
        return str(uuid.UUID(hex=value))
    except (TypeError, ValueError):
        return None


def read_receipts(directory: Path) -> Iterator[dict[str, Any]]:
    """Every receipt of one provider's peer, repeats included (`"duplicate": true`)."""
    return read_lines(directory / RECEIPTS)


def peer_dir(settings: Settings, provider: str) -> Path:
    return settings.data_dir / "peers" / provider


# Each provider module's routes: (provider name, a function of its Peer and the settings giving routes).
RouteFactory = Callable[[Peer, Settings], list[web.RouteDef]]


def providers() -> dict[str, RouteFactory]:
    """The HTTP providers this process serves, by name (imported here so each module stays independent)."""
    from tooling.peers import fcm
    from tooling.peers import slack
    from tooling.peers import twilio
    from tooling.peers import webpush

    return {"slack": slack.routes, "webhook": slack.webhook_routes, "twilio": twilio.routes,
            "fcm": fcm.routes, "webpush": webpush.routes}


# A provider that is a server of its own (not routes on this app): an aiohttp cleanup context of its
# Peer and the settings, run by `serve` beside the app; its Peer is in the app's, so /_faults covers it.
ServerFactory = Callable[[Peer, Settings], Callable[[web.Application], AsyncIterator[None]]]


def extra_servers() -> dict[str, ServerFactory]:
    """The providers served on their own port by this process (APNs: HTTP/2 over TLS)."""
    from tooling.peers import apns

    return {"apns": apns.server}


def fault_routes(peers: dict[str, Peer]) -> list[web.RouteDef]:
    def peer_of(request: web.Request) -> Peer:
        name = request.match_info["provider"]
        if name not in peers:
            raise web.HTTPNotFound(text=f"no peer {name!r}; peers: {', '.join(peers)}")
        return peers[name]

    async def set_fault(request: web.Request) -> web.Response:
        peer = peer_of(request)
        peer.faults = Fault.from_json(await request.json())
        return web.json_response(peer.faults.to_json())

    async def clear_fault(request: web.Request) -> web.Response:
        peer = peer_of(request)
        peer.faults = Fault()
        return web.json_response(peer.faults.to_json())

    async def get_fault(request: web.Request) -> web.Response:
        return web.json_response(peer_of(request).faults.to_json())

    return [web.post("/_faults/{provider}", set_fault), web.delete("/_faults/{provider}", clear_fault),
            web.get("/_faults/{provider}", get_fault), web.get("/_health", health)]


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(settings: Settings) -> web.Application:
    peers = {name: Peer(name, peer_dir(settings, name)) for name in (*providers(), *extra_servers())}
    app = web.Application(client_max_size=settings.max_message_bytes)
    for name, routes in providers().items():
        app.add_routes(routes(peers[name], settings))
    app.add_routes(fault_routes(peers))
    app["peers"] = peers
    return app


def serve(settings: Settings) -> None:
    app = make_app(settings)
    for name, server in extra_servers().items():
        app.cleanup_ctx.append(server(app["peers"][name], settings))
    web.run_app(app, host=settings.peers_host, port=settings.peers_port, print=None)
