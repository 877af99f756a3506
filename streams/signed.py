"""Signed tokens: base64url(JSON claims) "." base64url(HMAC-SHA256 of the first part).

Used where a URL or a browser carries proof of what Herald handed out: email tracking links
(agents/channels/tracking.py) and per-user inbox tokens (gateway/inbox.py). Only the holder of the
secret can make one; a token cannot be altered or moved to other claims without it.
"""

import base64
import hashlib
import hmac
import json
from typing import Any

MAX_TOKEN_CHARS = 4096


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signature(secret: str, body: str) -> str:
    return b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


def sign(secret: str, claims: dict[str, Any]) -> str:
    body = b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{signature(secret, body)}"


def verify(secret: str, token: str) -> dict[str, Any] | None:
    """The claims of a token this secret signed, else None (forged, altered, or not a token)."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return None
    body, mac = token.split(".")
    if not hmac.compare_digest(mac.encode("utf-8", "surrogatepass"), signature(secret, body).encode()):
        return None
    try:
        claims = json.loads(unb64(body))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None
