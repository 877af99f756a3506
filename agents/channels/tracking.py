"""Email open and click tracking: signed links the email adapter writes and the gateway follows.

A delivered HTML email gets a 1×1 image (`/t/o/<token>`) and each of its http(s) links is replaced
by `/t/c/<token>` on the gateway's public URL. The token is the link's facts (notification, tenant,
template, category, and for a click the target URL) as base64url JSON, a dot, and an HMAC-SHA256 of
that with `tracking_secret`. The gateway redirects only to a URL a valid token names, so it is no
open redirect, and a token cannot be moved to another notification or URL without the secret.
"""

import base64
import hashlib
import hmac
import html
import json
import re
from typing import Any
from urllib.parse import urlsplit

from streams.settings import Settings

# An href to an absolute http(s) URL, as the template's autoescaping writes it (& as &amp;).
HREF = re.compile(r'''href="(https?://[^"<>\s]+)"''', re.IGNORECASE)
MAX_TOKEN_CHARS = 4096


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signature(secret: str, body: str) -> str:
    return b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


def sign(secret: str, facts: dict[str, Any]) -> str:
    body = b64(json.dumps(facts, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{signature(secret, body)}"


def verify(secret: str, token: str) -> dict[str, Any] | None:
    """The facts of a token this secret signed, else None (forged, altered, or not a token)."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return None
    body, mac = token.split(".")
    if not hmac.compare_digest(mac, signature(secret, body)):
        return None
    try:
        facts = json.loads(unb64(body))
    except ValueError:
        return None
    return facts if isinstance(facts, dict) and isinstance(facts.get("n"), str) else None


def safe_target(url: Any) -> bool:
    """Only absolute http(s) URLs are ever redirected to."""
    return isinstance(url, str) and urlsplit(url).scheme in ("http", "https") and bool(urlsplit(url).netloc)


def task_facts(task: dict[str, Any]) -> dict[str, Any]:
    return {"n": str(task["notification_id"]), "t": task["tenant"], "tp": task["template_id"], "c": task["category"]}


def track_html(body: str, task: dict[str, Any], settings: Settings) -> str:
    """The HTML with its links through the click redirect and the open pixel appended."""
    secret = settings.tracking_secret.get_secret_value()
    base = settings.public_url.rstrip("/")
    facts = task_facts(task)

    def through_redirect(match: re.Match[str]) -> str:
        token = sign(secret, {**facts, "u": html.unescape(match.group(1))})
        return f'href="{base}/t/c/{token}"'

    pixel = f'<img src="{base}/t/o/{sign(secret, facts)}" width="1" height="1" alt="">'
    return HREF.sub(through_redirect, body) + pixel
