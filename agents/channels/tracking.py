"""Email open and click tracking: signed links the email adapter writes and the gateway follows.

A delivered HTML email gets a 1×1 image (`/t/o/<token>`) and each of its http(s) links is replaced
by `/t/c/<token>` on the gateway's public URL. The token is the link's facts (notification, tenant,
template, category, and for a click the target URL) as base64url JSON, a dot, and an HMAC-SHA256 of
that with `tracking_secret`. The gateway redirects only to a URL a valid token names, so it is no
open redirect, and a token cannot be moved to another notification or URL without the secret.
"""

import html
import re
from typing import Any
from urllib.parse import urlsplit

from streams import signed
from streams.settings import Settings

# An href to an absolute http(s) URL, as the template's autoescaping writes it (& as &amp;).
HREF = re.compile(r'''href="(https?://[^"<>\s]+)"''', re.IGNORECASE)


def verify(secret: str, token: str) -> dict[str, Any] | None:
    """The facts of a tracking token this secret signed, else None."""
    facts = signed.verify(secret, token)
    return facts if facts is not None and isinstance(facts.get("n"), str) else None


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
        token = signed.sign(secret, {**facts, "u": html.unescape(match.group(1))})
        return f'href="{base}/t/c/{token}"'

    pixel = f'<img src="{base}/t/o/{signed.sign(secret, facts)}" width="1" height="1" alt="">'
    return HREF.sub(through_redirect, body) + pixel
