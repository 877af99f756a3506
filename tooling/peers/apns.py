"""The local APNs: Apple's provider API (HTTP/2 over TLS, token auth) on its own port.

Served by hypercorn (ASGI over h2) with the local CA's certificate for 127.0.0.1
(tooling/peers/keys.py), on `HERALD_PUSH__APNS__PORT` (4443), in the peers process beside the HTTP
peers (server.py `extra_servers`): it shares their receipts and faults (`/_faults/apns`).

    POST /3/device/<device token>
        authorization: bearer <ES256 JWT: kid = key id, iss = team id, iat within the hour>
        apns-id, apns-topic, apns-push-type, apns-priority
        {"aps": {"alert": {"title": …, "body": …}}, …}

Answers as Apple does: 200 with the apns-id; errors with `{"reason": "<Apple's reason>"}`, a dead
token 410 `{"reason": "Unregistered", "timestamp": <ms>}`. The JWT is verified against the local
APNs key; a repeated apns-id is stored as a duplicate.
"""

import asyncio
import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hypercorn.asyncio import serve
from hypercorn.config import Config

from streams.settings import Settings
from tooling.peers import keys
from tooling.peers.server import Peer

PATH = re.compile(r"/3/device/([^/]*)")
DEVICE_TOKEN = re.compile(r"(?:[0-9a-f]{2}){32,100}")
MAX_PAYLOAD = 4096
TOKEN_MAX_AGE_S = 3600
PUSH_TYPES = {"alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity", "pushtotalk"}
# The reason an injected fault answers with, by status.
FAULT_REASONS = {400: "BadExpirationDate", 403: "ExpiredProviderToken", 410: "Unregistered", 413: "PayloadTooLarge",
                 429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}

Answer = tuple[int, dict[str, Any] | None, dict[str, str]]  # status, JSON body, extra headers


def refused(status: int, reason: str, **extra: Any) -> Answer:
    return status, {"reason": reason, **extra}, {}


def auth_problem(authorization: str, public_key: EllipticCurvePublicKey, settings: Settings) -> Answer | None:
    """Apple's reason for refusing the provider token, or None when it is good."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return refused(403, "MissingProviderToken")
    apns = settings.push.apns
    try:
        if jwt.get_unverified_header(token).get("kid") != apns.key_id:
            return refused(403, "InvalidProviderToken")
        claims = jwt.decode(token, public_key, algorithms=["ES256"], issuer=apns.team_id,
                            options={"require": ["iss", "iat"], "verify_iat": False})
    except jwt.PyJWTError:
        return refused(403, "InvalidProviderToken")
    if not isinstance(claims["iat"], int) or time.time() - claims["iat"] > TOKEN_MAX_AGE_S:
        return refused(403, "ExpiredProviderToken")
    return None


def header_problem(headers: dict[str, str], settings: Settings) -> Answer | None:
    if not headers.get("apns-topic"):
        return refused(400, "MissingTopic")
    if headers["apns-topic"] != settings.push.apns.topic:
        return refused(400, "TopicDisallowed")
    try:
        uuid.UUID(headers.get("apns-id", ""))
    except ValueError:
        return refused(400, "BadMessageId")
    if headers.get("apns-push-type", "alert") not in PUSH_TYPES:
        return refused(400, "InvalidPushType")
    if headers.get("apns-priority", "10") not in ("5", "10", "1"):
        return refused(400, "BadPriority")
    return None


def payload_problem(body: bytes) -> Answer | None:
    if len(body) > MAX_PAYLOAD:
        return refused(413, "PayloadTooLarge")
    try:
        payload = json.loads(body)
    except ValueError:
        return refused(400, "PayloadEmpty")
    if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
        return refused(400, "PayloadEmpty")
    return None


class ApnsPeer:
    def __init__(self, peer: Peer, settings: Settings) -> None:
        self.peer = peer
        self.settings = settings
        self.public_key = load_pem_private_key(keys.apns_auth_key(settings).encode(), None).public_key()

    async def answer(self, method: str, path: str, headers: dict[str, str], body: bytes, http_version: str) -> Answer:
        match = PATH.fullmatch(path)
        if match is None:
            return refused(404, "BadPath")
        if method != "POST":
            return refused(405, "MethodNotAllowed")
        status = await self.peer.fault()
        if status is not None:
            return status, {"reason": FAULT_REASONS.get(status, "InternalServerError")}, self.peer.retry_after_headers()
        token = match.group(1)
        problem = (auth_problem(headers.get("authorization", ""), self.public_key, self.settings)  # type: ignore[arg-type]
                   or header_problem(headers, self.settings) or payload_problem(body))
        if problem:
            return problem
        if not DEVICE_TOKEN.fullmatch(token):
            return refused(400, "BadDeviceToken")
        if self.peer.is_dead(token):
            return refused(410, "Unregistered", timestamp=int(time.time() * 1000))
        self.peer.record({"device_token": token, "apns_id": headers["apns-id"], "topic": headers["apns-topic"],
                          "push_type": headers.get("apns-push-type"), "priority": headers.get("apns-priority"),
                          "http_version": http_version, "payload": json.loads(body)},
                         key=f"{token}/{headers.get('apns-collapse-id') or headers['apns-id']}",
                         notification_id=headers["apns-id"])
        return 200, None, {}

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """The ASGI app."""
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        status, reply, extra = await self.answer(scope["method"], scope["path"], headers, body, scope["http_version"])
        content = json.dumps(reply).encode() if reply is not None else b""
        response_headers = {"apns-id": headers.get("apns-id", str(uuid.uuid4())), **extra}
        if reply is not None:
            response_headers["content-type"] = "application/json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in response_headers.items()]})
        await send({"type": "http.response.body", "body": content})


async def run(peer: Peer, settings: Settings, listening: socket.socket, shutdown: asyncio.Event) -> None:
    """Serve the APNs peer on a listening socket (its ownership passes to hypercorn) until `shutdown`."""
    config = Config()
    config.bind = [f"fd://{listening.detach()}"]
    config.certfile = config.keyfile = str(keys.local_tls(settings).server)
    config.accesslog = None
    await serve(ApnsPeer(peer, settings), config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]


def server(peer: Peer, settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The APNs peer as an aiohttp cleanup context: it listens on its port while the peers app runs."""
    async def context(app: web.Application) -> AsyncIterator[None]:
        listening = socket.create_server((settings.peers_host, settings.push.apns.port))  # fails now if taken
        shutdown = asyncio.Event()
        task = asyncio.create_task(run(peer, settings, listening, shutdown))
        yield
        shutdown.set()
        await task
    return context
