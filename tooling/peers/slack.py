"""Local peers of the chat channel: Slack incoming webhooks, and a receiver of Herald's signed webhooks.

Slack (provider `slack`): `POST /services/{team}/{bot}/{secret}` with a JSON body, answered as
hooks.slack.com does: 200 `ok`, or an error status with Slack's error string, in text/plain:
400 `invalid_payload` (not a JSON object), `no_text` (no text, blocks nor attachments),
`invalid_blocks` (a block Slack would refuse: unknown type, empty or too long text); 404 `no_service`
for a hook that is malformed or dead (fault `dead` lists its path or full URL). Injected faults answer
with Slack's string for their status (410 `channel_is_archived`, 429 `rate_limited` with
Retry-After…). It records the hook's path, the text and the blocks. Slack has no idempotency key, so
a repeat is stored as a new message, as in Slack.

Generic webhooks (provider `webhook`): `POST /webhooks/{name}`, a receiver as the chat module's
docstring tells one to be: the signature is verified (`HERALD_CHAT__WEBHOOK_SECRET`, 5 minutes'
tolerance) and a wrong or stale one is refused with 401; a dead hook (its name or full URL in `dead`)
answers 410; it records the JSON body, and a repeated Idempotency-Key is recorded as a duplicate
and answered 200 again.
"""

import json
from typing import Any

from aiohttp import web

from agents.channels.chat import SLACK_HEADER_MAX, SLACK_SECTION_MAX, verify_signature
from streams.settings import Settings
from tooling.peers.server import Peer

SLACK_ERRORS = {400: "invalid_payload", 403: "action_prohibited", 404: "no_service", 410: "channel_is_archived",
                429: "rate_limited"}
BLOCK_TEXT_MAX = {"header": SLACK_HEADER_MAX, "section": SLACK_SECTION_MAX}
MAX_BLOCKS = 50


def slack_answer(status: int, error: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=error, headers=headers)


def valid_block(block: Any) -> bool:
    """The part of Block Kit's rules the chat adapter's blocks meet (header, section, context)."""
    if not isinstance(block, dict):
        return False
    if block.get("type") == "context":
        elements = block.get("elements")
        return isinstance(elements, list) and 0 < len(elements) <= 10
    limit, text = BLOCK_TEXT_MAX.get(block.get("type", "")), block.get("text")
    kinds = ("plain_text",) if block.get("type") == "header" else ("plain_text", "mrkdwn")
    return (limit is not None and isinstance(text, dict) and text.get("type") in kinds
            and isinstance(text.get("text"), str) and 0 < len(text["text"]) <= limit)


def payload_problem(body: Any) -> str | None:
    """Slack's error string for a body it would refuse, or None."""
    if not isinstance(body, dict):
        return "invalid_payload"
    blocks = body.get("blocks")
    if not (body.get("text") or blocks or body.get("attachments")):
        return "no_text"
    if blocks is not None and not (isinstance(blocks, list) and len(blocks) <= MAX_BLOCKS
                                   and all(valid_block(block) for block in blocks)):
        return "invalid_blocks"
    return None


def context_id(blocks: Any) -> str | None:
    """The notification id Herald writes in a message's context block ("Herald notification <id>")."""
    for block in blocks or ():
        for element in (block.get("elements") or ()) if isinstance(block, dict) and block.get("type") == "context" else ():
            text = element.get("text", "") if isinstance(element, dict) else ""
            if text.startswith("Herald notification "):
                return text.removeprefix("Herald notification ")
    return None


def routes(peer: Peer, settings: Settings) -> list[web.RouteDef]:
    async def incoming_webhook(request: web.Request) -> web.Response:
        status = await peer.fault()
        if status is not None:
            return slack_answer(status, SLACK_ERRORS.get(status, "rollup_error"), peer.retry_after_headers())
        hook = request.match_info
        if (not hook["team"].startswith("T") or not hook["bot"].startswith("B")
                or peer.is_dead(request.path) or peer.is_dead(str(request.url))):
            return slack_answer(404, "no_service")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return slack_answer(400, "invalid_payload")
        problem = payload_problem(body)
        if problem:
            return slack_answer(400, problem)
        peer.record({"hook": request.path, "text": body.get("text"), "blocks": body.get("blocks")},
                    notification_id=context_id(body.get("blocks")))
        return slack_answer(200, "ok")

    return [web.post("/services/{team}/{bot}/{secret}", incoming_webhook)]


def webhook_routes(peer: Peer, settings: Settings) -> list[web.RouteDef]:
    secret = settings.chat.webhook_secret.get_secret_value()

    async def receive(request: web.Request) -> web.Response:
        status = await peer.fault()
        if status is not None:
            return web.json_response({"error": f"fault {status}"}, status=status, headers=peer.retry_after_headers())
        body = await request.read()
        headers = request.headers
        if not verify_signature(secret, headers.get("X-Herald-Timestamp", ""), body,
                                headers.get("X-Herald-Signature", "")):
            return web.json_response({"error": "invalid_signature"}, status=401)
        name = request.match_info["name"]
        if peer.is_dead(name) or peer.is_dead(str(request.url)):
            return web.json_response({"error": "gone"}, status=410)
        try:
            payload = json.loads(body)
        except ValueError:
            return web.json_response({"error": "invalid_json"}, status=400)
        key = headers.get("Idempotency-Key")
        new = peer.record({"hook": name, "idempotency_key": key, "body": payload},
                          key=f"{name}/{key}" if key else None, notification_id=payload.get("notification_id"))
        return web.json_response({"ok": True, "duplicate": not new})

    return [web.post("/webhooks/{name}", receive)]
