"""The gateway's routes, declared once: what each takes and answers, checked by the handler and
published as the OpenAPI 3.1 document at /openapi.json.

A handler is registered through `endpoint(operation, handler)`: the returned handler validates the
path, the query and the JSON body with the operation's pydantic models (a 422 naming each bad field,
gateway/errors.py) and calls `handler(request, inputs)` with what they parsed. `document(app)` walks
the application's route table and writes each route's operation: parameters and bodies are the same
models' JSON schemas, so the document cannot say other than what the code checks. A route registered
without an operation makes `document` fail (tests/unit/test_openapi.py builds it for the real app).
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from gateway.errors import ErrorBody, field_errors, invalid, json_error

MAX_BODY_BYTES = 8 * 1024 * 1024
OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEMES = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "bearer": {"type": "http", "scheme": "bearer", "description": "the API key, or a user's inbox token"},
    "inboxToken": {"type": "apiKey", "in": "query", "name": "token", "description": "a user's inbox token"},
}
API_KEY = ({"apiKey": []}, {"bearer": []})


@dataclass(frozen=True)
class Reply:
    """One status an operation answers with: a JSON body of `model`, a body of another `media` type, or none."""

    description: str
    model: type[BaseModel] | None = None
    media: str | None = None


def error(description: str) -> Reply:
    return Reply(description, ErrorBody)


UNAUTHORIZED = {401: error("no API key, or a wrong one"),
                429: error("over the API key's rate; the Retry-After header says when to come back")}
INVALID = {422: error("bad input: `detail` names each field and its problem")}
TOO_LARGE = {413: error("the body is too large")}
UNAVAILABLE = {503: error("Kafka, ClickHouse or a folded log is not available yet; Retry-After says when to retry")}
NOT_FOUND = {404: error("no such resource")}


@dataclass(frozen=True)
class Inputs:
    path: Any = None
    query: Any = None
    body: Any = None


@dataclass(frozen=True)
class Operation:
    summary: str
    replies: Mapping[int, Reply]
    path: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    """The JSON body, validated before the handler runs."""
    form: type[BaseModel] | None = None
    """A form body (a provider's callback), described here and read by the handler itself."""
    security: tuple[dict[str, list[str]], ...] = API_KEY
    description: str = ""
    tags: tuple[str, ...] = field(default=())

    def all_replies(self) -> dict[int, Reply]:
        """The declared replies, with those every operation of its kind can give."""
        replies = dict(self.replies)
        if self.security:
            replies = {**UNAUTHORIZED, **replies}
        if self.path or self.query or self.body:
            replies = {**INVALID, **replies}
        if self.body:
            replies = {**TOO_LARGE, **replies}
        return dict(sorted(replies.items()))


Handler = Callable[[web.Request, Inputs], Awaitable[web.StreamResponse]]
OPERATION = "operation"  # the attribute of a registered handler that holds its Operation


async def read_body(request: web.Request) -> bytes | web.Response:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")


def validated(model: type[BaseModel] | None, values: Mapping[str, str]) -> tuple[Any, list[dict[str, str]]]:
    if model is None:
        return None, []
    try:
        return model.model_validate(dict(values)), []
    except ValidationError as exc:
        return None, field_errors(exc)


async def inputs_of(request: web.Request, operation: Operation) -> Inputs | web.Response:
    path, path_problems = validated(operation.path, request.match_info)
    query, query_problems = validated(operation.query, request.query)
    if path_problems or query_problems:
        return invalid(path_problems + query_problems)
    body = None
    if operation.body is not None:
        raw = await read_body(request)
        if isinstance(raw, web.Response):
            return raw
        try:
            body = operation.body.model_validate_json(raw)
        except ValidationError as exc:
            return invalid(field_errors(exc))
    return Inputs(path, query, body)


def endpoint(operation: Operation, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of an operation: its inputs checked, then `handler` called with them."""
    async def handle(request: web.Request) -> web.StreamResponse:
        inputs = await inputs_of(request, operation)
        if isinstance(inputs, web.Response):
            return inputs
        return await handler(request, inputs)

    setattr(handle, OPERATION, operation)
    return handle


def reply(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response of a response model, as the document describes it."""
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json",
                        headers=headers)


# --- The document ------------------------------------------------------------------------------------------


def operations(app: web.Application) -> list[tuple[str, str, Operation]]:
    """(method, path, operation) of every route of `app` and its subapps; HEAD goes with its GET, and
    static files (the dashboard's bundle) are no operation."""
    found = []
    for route in app.router.routes():
        if route.method == "HEAD" or isinstance(route.resource, web.StaticResource):  # files, not an API
            continue
        operation = getattr(route.handler, OPERATION, None)
        path = route.resource.canonical if route.resource is not None else "?"
        if operation is None:
            raise ValueError(f"{route.method} {path} is registered without an Operation (gateway/openapi.py)")
        found.append((route.method, path, operation))
    return found


class Schemas:
    """The JSON schemas of every model the document names, under components/schemas."""

    def __init__(self, ops: list[tuple[str, str, Operation]]) -> None:
        wanted: set[tuple[type[BaseModel], str]] = set()
        for _, _, op in ops:
            for model in (op.path, op.query, op.body, op.form):
                if model is not None:
                    wanted.add((model, "validation"))
            for answer in op.all_replies().values():
                if answer.model is not None:
                    wanted.add((answer.model, "serialization"))
        ordered = sorted(wanted, key=lambda item: (item[0].__module__, item[0].__qualname__, item[1]))
        self.refs, top = models_json_schema(ordered, ref_template="#/components/schemas/{model}")
        self.defs: dict[str, Any] = top.get("$defs", {})

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, Any]:
        return self.refs[model, mode]  # type: ignore[index]

    def inline(self, model: type[BaseModel]) -> dict[str, Any]:
        """The model's own schema (for its properties as parameters)."""
        return self.defs[self.ref(model, "validation")["$ref"].rsplit("/", 1)[1]]


def parameters(schemas: Schemas, model: type[BaseModel] | None, where: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = schemas.inline(model)
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema.get("properties", {}).items():
        parameter = {"name": name, "in": where, "required": where == "path" or name in required, "schema": prop}
        if "description" in prop:
            parameter["description"] = prop["description"]
        out.append(parameter)
    return out


def operation_object(schemas: Schemas, op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "operationId": None,
                           "parameters": parameters(schemas, op.path, "path") + parameters(schemas, op.query, "query"),
                           "security": list(op.security), "responses": {}}
    if op.description:
        doc["description"] = op.description
    if op.tags:
        doc["tags"] = list(op.tags)
    if op.body is not None:
        doc["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": schemas.ref(op.body, "validation")}}}
    elif op.form is not None:
        doc["requestBody"] = {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": schemas.ref(op.form, "validation")}}}
    for status, answer in op.all_replies().items():
        response: dict[str, Any] = {"description": answer.description}
        if answer.model is not None:
            response["content"] = {"application/json": {"schema": schemas.ref(answer.model, "serialization")}}
        elif answer.media is not None:
            response["content"] = {answer.media: {"schema": {"type": "string"}}}
        doc["responses"][str(status)] = response
    if not doc["parameters"]:
        del doc["parameters"]
    return doc


def operation_id(method: str, path: str) -> str:
    words = [part.strip("{}") for part in path.split("/") if part]
    return "_".join([method.lower(), *words]).replace("-", "_").replace(".", "_")


def document(app: web.Application, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of `app`."""
    ops = operations(app)
    schemas = Schemas(ops)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in ops:
        entry = operation_object(schemas, op)
        entry["operationId"] = operation_id(method, path)
        paths.setdefault(path, {})[method.lower()] = entry
    return {"openapi": OPENAPI_VERSION, "info": {"title": title, "version": version},
            "paths": dict(sorted(paths.items())),
            "components": {"schemas": schemas.defs, "securitySchemes": SECURITY_SCHEMES}}
