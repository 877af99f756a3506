"""The local FCM: Google's OAuth2 token endpoint and Firebase Cloud Messaging's HTTP v1 send.

    POST /token   grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<RS256 JWT>
        The assertion is checked as Google does: signed by the local service account's key
        (tooling/peers/keys.py, `kid` its private_key_id), iss its client_email, aud Google's token
        URI, within its exp, asking for the firebase.messaging scope. Answers
        {"access_token", "expires_in", "token_type": "Bearer"}, or 400 {"error": "invalid_grant", …}.
    POST /v1/projects/<project>/messages:send   Authorization: Bearer <access token>
        {"message": {"token", "notification", "data", "android"}} → 200 {"name": "projects/…/messages/…"};
        errors in FCM's shape: {"error": {"code", "message", "status", "details": [{"@type":
        "…FcmError", "errorCode"}]}}: 401 UNAUTHENTICATED, 404 UNREGISTERED (a dead token),
        400 INVALID_ARGUMENT (with a google.rpc.BadRequest field violation), and injected faults.

The android collapse key is the idempotency key receipts are stored under.
"""

import re
import secrets
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from streams.settings import Settings
from tooling.peers import keys
from tooling.peers.server import Peer, hex_id

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # the assertion's audience, whatever URI it is posted to
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
TOKEN_LIFETIME_S = 3600
REGISTRATION_TOKEN = re.compile(r"[A-Za-z0-9_\-:]{32,1024}")
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
STATUSES = {400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), 401: ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
            403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH"), 404: ("NOT_FOUND", "UNREGISTERED"),
            429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), 500: ("INTERNAL", "INTERNAL"),
            503: ("UNAVAILABLE", "UNAVAILABLE")}


def fcm_error(status: int, message: str, error_code: str | None = None, field: str | None = None,
              headers: dict[str, str] | None = None, fcm_detail: bool = True) -> web.Response:
    """FCM's error JSON; `fcm_detail` false for errors Google's front end answers (a refused OAuth token)."""
    rpc_status, default_code = STATUSES.get(status, ("UNKNOWN", "UNSPECIFIED_ERROR"))
    details: list[dict[str, Any]] = [{"@type": FCM_ERROR, "errorCode": error_code or default_code}] if fcm_detail else []
    if field:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": field, "description": message}]})
    body = {"error": {"code": status, "message": message, "status": rpc_status, "details": details}}
    return web.json_response(body, status=status, headers=headers)


def invalid_grant(description: str) -> web.Response:
    return web.json_response({"error": "invalid_grant", "error_description": description}, status=400)


def message_problem(message: Any) -> web.Response | None:
    """FCM's answer to a malformed message, or None."""
    if not isinstance(message, dict):
        return fcm_error(400, "Invalid JSON payload received.", field="message")
    if not isinstance(message.get("token"), str) or not REGISTRATION_TOKEN.fullmatch(message["token"]):
        return fcm_error(400, "The registration token is not a valid FCM registration token", field="message.token")
    notification = message.get("notification", {})
    if not isinstance(notification, dict) or not all(isinstance(v, str) for v in notification.values()):
        return fcm_error(400, "Invalid value at 'message.notification'", field="message.notification")
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return fcm_error(400, "Invalid value at 'message.data': values must be strings", field="message.data")
    if message.get("android", {}).get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
        return fcm_error(400, "Invalid value at 'message.android.priority'", field="message.android.priority")
    return None


def routes(peer: Peer, settings: Settings) -> list[web.RouteDef]:
    account = keys.fcm_service_account(settings)
    public_key = load_pem_private_key(account["private_key"].encode(), None).public_key()
    access_tokens: dict[str, float] = {}  # access token → when it expires

    def grant_problem(assertion: str) -> str | None:
        try:
            if jwt.get_unverified_header(assertion).get("kid") != account["private_key_id"]:
                return "Invalid JWT Signature."
            claims = jwt.decode(assertion, public_key, algorithms=["RS256"], audience=GOOGLE_TOKEN_URI,
                                issuer=account["client_email"], options={"require": ["iss", "aud", "iat", "exp"]})
        except jwt.InvalidSignatureError:
            return "Invalid JWT Signature."
        except jwt.PyJWTError as exc:
            return f"Invalid JWT: {exc}"
        if SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid OAuth scope or ID token audience provided."
        return None

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return web.json_response({"error": "unsupported_grant_type",
                                      "error_description": "Invalid grant_type"}, status=400)
        problem = grant_problem(str(form.get("assertion", "")))
        if problem:
            return invalid_grant(problem)
        access_token = f"ya29.local-{secrets.token_urlsafe(32)}"
        access_tokens[access_token] = time.time() + TOKEN_LIFETIME_S
        return web.json_response({"access_token": access_token, "expires_in": TOKEN_LIFETIME_S - 1,
                                  "token_type": "Bearer"})

    def authorized(request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and access_tokens.get(value, 0.0) > time.time()

    async def send(request: web.Request) -> web.Response:
        if not authorized(request):
            return fcm_error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                             fcm_detail=False)
        project = request.match_info["project"]
        if project != settings.push.fcm.project_id:
            return fcm_error(403, f"Permission denied on project {project}.", error_code="SENDER_ID_MISMATCH")
        status = await peer.fault()
        if status is not None:
            return fcm_error(status, "Injected fault", headers=peer.retry_after_headers())
        try:
            message = (await request.json())["message"]
        except (ValueError, KeyError, TypeError):
            return fcm_error(400, "Invalid JSON payload received.", field="message")
        problem = message_problem(message)
        if problem is not None:
            return problem
        if peer.is_dead(message["token"]):
            return fcm_error(404, "Requested entity was not found.", error_code="UNREGISTERED")
        collapse = message.get("android", {}).get("collapse_key")
        peer.record({"project": project, **message}, key=f"{message['token']}/{collapse}" if collapse else None,
                    notification_id=hex_id(collapse))
        return web.json_response({"name": f"projects/{project}/messages/{uuid.uuid4().int >> 64}"})

    return [web.post("/token", token), web.post("/v1/projects/{project}/messages:send", send)]
