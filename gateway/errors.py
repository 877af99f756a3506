"""The gateway's error bodies: `{"error": code, "detail": text or [{"field", "message"}]}`.

Bad input is a 422 whose detail lists each problem with the field it is about, named by pydantic's
`loc` joined with dots (`recipient.user_id`, `channels.1`; a path or query parameter by its name);
other errors say what went wrong in a sentence.
"""

from typing import Any

from aiohttp import web
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

REFUSED = Counter("herald_gateway_refused_total", "Requests refused by the gateway", ["reason"])

# A 422 lists at most this many problems (a 10,000-recipient batch can have 10,000 of them).
MAX_REPORTED_ERRORS = 50
# A field path names a map key as it was sent; past this many characters it is cut.
MAX_PATH_PART_CHARS = 64


class Problem(BaseModel):
    field: str
    """Where the problem is: a dotted path into the body, or a parameter's name; `(body)` for the whole body."""
    message: str


class ErrorBody(BaseModel):
    error: str
    """A machine-readable code: invalid_request, unauthorized, not_found, unavailable, …"""
    detail: str | list[Problem]
    """What was wrong: each field's problem for invalid_request, else a sentence."""


def json_error(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> web.Response:
    REFUSED.labels(error).inc()
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def invalid(problems: list[dict[str, str]]) -> web.Response:
    return json_error(422, "invalid_request", problems)


def problem(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


def path_part(part: Any) -> str:
    text = str(part)
    return text if len(text) <= MAX_PATH_PART_CHARS else f"{text[:MAX_PATH_PART_CHARS]}…"


def capped(problems: list[dict[str, str]], total: int | None = None) -> list[dict[str, str]]:
    """At most MAX_REPORTED_ERRORS problems, and a last entry that says how many were left out."""
    total = len(problems) if total is None else total
    if total <= MAX_REPORTED_ERRORS:
        return problems
    return [*problems[:MAX_REPORTED_ERRORS],
            problem("(more)", f"{total - MAX_REPORTED_ERRORS} more problems not shown")]


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    return capped([problem(".".join(path_part(p) for p in err["loc"]) or "(body)", err["msg"])
                   for err in errors[:MAX_REPORTED_ERRORS]], len(errors))
