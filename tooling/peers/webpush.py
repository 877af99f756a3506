"""The local web push service (RFC 8030), with VAPID (RFC 8292) and aes128gcm payloads (RFC 8291).

    GET  /push/_subscribe[?id=<id>]
        A subscription, as a browser's PushSubscription.toJSON() gives it, plus the Herald push
        token for it: {"endpoint": "<this server>/push/<id>", "keys": {"p256dh", "auth"}, "token":
        "webpush:…"}. Its keys come from `keys.subscription_keys` (derived from the local seed and
        the id), so the peer can decrypt for every subscription it handed out, across restarts.
        Like a browser given the app's applicationServerKey, a subscription takes only pushes
        signed with the local VAPID key.
    POST /push/<id>   Authorization: vapid t=<ES256 JWT>, k=<public key>; TTL; Content-Encoding: aes128gcm
        The JWT is verified (signature with k, aud this origin, exp within 24 hours, sub), the
        payload decrypted with the subscription's private key and stored in clear; 201 with a
        Location. 401 for a bad JWT, 403 for another application server's key, 400 for a missing
        TTL or an undecryptable payload, 413 past 4096 bytes, 410 for a dead subscription.

The Topic header is the idempotency key receipts are stored under.
"""

import base64
import json
import re
import time
import uuid
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from streams.settings import Settings
from tooling.peers import keys
from tooling.peers.server import Peer, hex_id

MAX_PAYLOAD = 4096
MAX_EXP_S = 24 * 3600
VAPID = re.compile(r"vapid\s+(?P<params>.+)", re.IGNORECASE)
TOPIC = re.compile(r"[A-Za-z0-9_\-]{1,32}")
URGENCIES = {"very-low", "low", "normal", "high"}
ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": status, "error": message}, status=status, headers=headers)


def vapid_problem(authorization: str, audience: str, server_key: bytes) -> web.Response | None:
    """Why the VAPID authorization is refused (RFC 8292 section 4), or None when it is good."""
    match = VAPID.fullmatch(authorization.strip())
    params = dict(p.strip().split("=", 1) for p in match["params"].split(",") if "=" in p) if match else {}
    if "t" not in params or "k" not in params:
        return problem(401, "missing VAPID authorization (vapid t=…, k=…)")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(params["k"]))
        claims = jwt.decode(params["t"], key, algorithms=["ES256"], audience=audience,
                            options={"require": ["aud", "exp", "sub"]})
    except (ValueError, jwt.PyJWTError) as exc:
        return problem(401, f"invalid VAPID token: {exc}")
    if claims["exp"] > time.time() + MAX_EXP_S:
        return problem(401, "VAPID token expires more than 24 hours from now")
    if not str(claims["sub"]).startswith(("mailto:", "https:")):
        return problem(401, "VAPID sub is neither mailto: nor https:")
    if point(key) != server_key:
        return problem(403, "the VAPID key is not the one this subscription was made for")
    return None


def header_problem(request: web.Request) -> web.Response | None:
    if not request.headers.get("TTL", "").isdigit():
        return problem(400, "TTL header required")
    if request.headers.get("Content-Encoding") != "aes128gcm":
        return problem(400, "Content-Encoding must be aes128gcm")
    if "Topic" in request.headers and not TOPIC.fullmatch(request.headers["Topic"]):
        return problem(400, "Topic is at most 32 base64url characters")
    if request.headers.get("Urgency", "normal") not in URGENCIES:
        return problem(400, "Urgency is very-low, low, normal or high")
    return None


def cleartext(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def routes(peer: Peer, settings: Settings) -> list[web.RouteDef]:
    server_key = point(load_pem_private_key(keys.vapid_private_key(settings).encode(), None).public_key())

    async def subscribe(request: web.Request) -> web.Response:
        subscription_id = request.query.get("id") or uuid.uuid4().hex
        if not ID.fullmatch(subscription_id):
            return problem(400, "id is 1 to 64 base64url characters")
        secret = keys.subscription_keys(settings, subscription_id)
        info = {"endpoint": f"{request.scheme}://{request.host}/push/{subscription_id}",
                "keys": {"p256dh": b64(point(secret.private_key.public_key())), "auth": b64(secret.auth)}}
        token = "webpush:" + b64(json.dumps(info, separators=(",", ":"), sort_keys=True).encode())
        return web.json_response({**info, "token": token})

    async def push(request: web.Request) -> web.Response:
        subscription_id = request.match_info["id"]
        status = await peer.fault()
        if status is not None:
            return problem(status, "injected fault", headers=peer.retry_after_headers())
        refusal = (vapid_problem(request.headers.get("Authorization", ""), f"{request.scheme}://{request.host}",
                                 server_key) or header_problem(request))
        if refusal is not None:
            return refusal
        if not ID.fullmatch(subscription_id) or peer.is_dead(subscription_id):
            return problem(410, "push subscription has unsubscribed or expired")
        body = await request.read()
        if len(body) > MAX_PAYLOAD:
            return problem(413, f"payload larger than {MAX_PAYLOAD} bytes")
        secret = keys.subscription_keys(settings, subscription_id)
        try:
            clear = http_ece.decrypt(body, private_key=secret.private_key, auth_secret=secret.auth, version="aes128gcm")
        except Exception as exc:  # http_ece raises ECEException, ValueError, InvalidTag… for what does not decrypt
            return problem(400, f"payload does not decrypt: {type(exc).__name__}")
        topic = request.headers.get("Topic")
        peer.record({"subscription": subscription_id, "ttl": int(request.headers["TTL"]), "topic": topic,
                     "urgency": request.headers.get("Urgency", "normal"), "payload": cleartext(clear)},
                    key=f"{subscription_id}/{topic}" if topic else None, notification_id=hex_id(topic))
        return web.Response(status=201, headers={"Location": f"/message/{uuid.uuid4().hex}"})

    return [web.get("/push/_subscribe", subscribe), web.post("/push/{id}", push)]
