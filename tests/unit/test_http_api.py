"""gateway/api.py and gateway/openapi.py: the HTTP API for templates, preferences and scheduled
notifications over folded tables and a stand-in producer, and the OpenAPI document built from the
route table."""

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from gateway.openapi import document
from gateway.server import Gateway
from schemas.models import PreferencesUpdated, TemplateUpserted
from streams.codec import default_serde
from streams.settings import Settings
from tests.unit import records
from tests.unit.test_gateway import StandInProducer

KEY = {"X-API-Key": "secret"}
WELCOME = "/v1/templates/welcome/versions/1"


def folded(table: Any, *entries: tuple[bytes, dict[str, Any]]) -> Any:
    for key, record in entries:
        table.fold(key, record)
    table.ready.set()
    return table


def template_record(**overrides: Any) -> dict[str, Any]:
    return TemplateUpserted.model_validate(records.template(**overrides)).to_avro()


def preferences_record(**overrides: Any) -> dict[str, Any]:
    return PreferencesUpdated.model_validate(records.preferences(**{"tenant": "default", **overrides})).to_avro()


class Stack:
    """The gateway's app with its tables folded by hand and the producer standing in for Kafka."""

    def __init__(self) -> None:
        self.producer = StandInProducer()
        self.gateway = Gateway(Settings(api_key="secret", clickhouse_port=1))  # nothing listens there
        self.app = self.gateway.web_app()
        self.app.on_startup.clear()
        self.app.on_cleanup.clear()
        self.gateway.kafka.producer = self.producer  # type: ignore[assignment]
        api = self.gateway.api
        settings = self.gateway.settings
        from streams.tables import CancellationTable, PreferenceTable, TemplateTable

        api.templates.table = folded(
            TemplateTable(settings),
            (b"welcome/en/1", template_record()),
            (b"welcome/en/2", template_record(version=2, parts=[records.part("email"), records.part("sms", html=None)])),
            (b"theirs/en/1", template_record(template_id="theirs", tenant="other")))
        api.preferences.table = folded(
            PreferenceTable(settings),
            (b"alice", preferences_record(user_id="alice", email="alice@example.com")),
            (b"olga", preferences_record(user_id="olga", tenant="other")))
        api.cancellations.table = folded(CancellationTable(settings))

    def sent(self, name: str) -> list[dict[str, Any]]:
        return [default_serde().decode(value, name) for value in self.producer.sent]


@pytest.fixture
async def stack() -> AsyncIterator[tuple[Stack, TestClient]]:
    stack = Stack()
    async with TestClient(TestServer(stack.app)) as client:
        yield stack, client


async def call(client: TestClient, method: str, path: str, payload: Any = None, status: int = 200,
               **params: str) -> Any:
    data = None if payload is None else json.dumps(payload)
    response = await client.request(method, path, data=data, headers=KEY, params=params)
    assert response.status == status, await response.text()
    return await response.json()


def fields(payload: dict[str, Any]) -> list[str]:
    assert payload["error"] in ("invalid_request", "template_error", "template_limit")
    return [problem["field"] for problem in payload["detail"]]


# --- templates ---------------------------------------------------------------------------------------------


async def test_a_template_is_published_with_the_callers_tenant(stack: tuple[Stack, TestClient]) -> None:
    gateway, client = stack
    body = {"locale": "fr", "parts": [records.part("email")], "variables": ["name"], "category": "account"}
    answer = await call(client, "PUT", "/v1/templates/hello/versions/3", body, status=202)
    [published] = gateway.sent("TemplateUpserted")
    assert (published["template_id"], published["version"], published["locale"], published["tenant"]) == \
           ("hello", 3, "fr", "default")
    assert answer["template_id"] == "hello" and answer["category"] == "account"


@pytest.mark.parametrize(("body", "field"), [
    ({"parts": [records.part("email", text="{% if %}")]}, "parts.0"),
    ({"parts": [records.part("email", html="{{ name|safe }}")]}, "parts.0"),
    ({"parts": [records.part("email")], "digest": {"window_s": 0}}, "digest"),
    ({"parts": [records.part("email")], "frequency_caps": [{"limit": 0, "period_s": 3600}]}, "frequency_caps.0"),
    ({"parts": [records.part("email")], "locale": "en/x"}, "locale"),
    ({"parts": [records.part("fax")]}, "parts.0.channel"),
    ({"parts": [], "colour": "red"}, "colour"),
    ({"parts": [records.part("email")], "tenant": "other"}, "tenant"),
])
async def test_a_template_that_must_not_be_published_is_422_naming_the_field(
        stack: tuple[Stack, TestClient], body: dict[str, Any], field: str) -> None:
    gateway, client = stack
    assert field in fields(await call(client, "PUT", WELCOME, body, status=422))
    assert gateway.producer.sent == []


async def test_unsafe_html_is_published_when_allowed(stack: tuple[Stack, TestClient]) -> None:
    gateway, client = stack
    body = {"parts": [records.part("email", html="{{ name|safe }}")]}
    await call(client, "PUT", WELCOME, body, status=202, allow_unsafe_html="true")
    assert len(gateway.producer.sent) == 1


async def test_the_list_and_a_version_show_only_the_callers_templates(stack: tuple[Stack, TestClient]) -> None:
    _, client = stack
    listed = await call(client, "GET", "/v1/templates")
    assert listed == {"templates": [{"template_id": "welcome", "locale": "en", "versions": [1, 2],
                                     "category": "transactional"}]}
    assert (await call(client, "GET", "/v1/templates/welcome/versions/2"))["parts"][1]["channel"] == "sms"
    await call(client, "GET", "/v1/templates/theirs/versions/1", status=404)
    await call(client, "GET", "/v1/templates/welcome/versions/7", status=404)
    assert fields(await call(client, "GET", "/v1/templates/welcome/versions/0", status=422)) == ["version"]


async def test_a_preview_renders_with_the_template_stage(stack: tuple[Stack, TestClient]) -> None:
    _, client = stack
    preview = await call(client, "POST", "/v1/templates/welcome/versions/2/preview",
                         {"variables": {"name": "<Ada>"}, "channels": ["email"]})
    [email] = preview["rendered"]
    assert (email["subject"], email["html"]) == ("Hello <Ada>", "<p>Hi &lt;Ada&gt;</p>")
    both = await call(client, "POST", "/v1/templates/welcome/versions/2/preview", {"variables": {"name": "A"}})
    assert [content["channel"] for content in both["rendered"]] == ["email", "sms"]


@pytest.mark.parametrize(("body", "field"), [
    ({"variables": {}}, "variables.name"),
    ({"variables": {"name": "A"}, "channels": ["push"]}, "channels.0"),
    ({"variables": {"name": "A"}, "channels": ["fax"]}, "channels.0"),
    ({"variables": {"name": 5}}, "variables.name"),
])
async def test_a_preview_of_bad_input_is_422_naming_the_field(stack: tuple[Stack, TestClient], body: dict[str, Any],
                                                              field: str) -> None:
    _, client = stack
    assert fields(await call(client, "POST", f"{WELCOME}/preview", body, status=422)) == [field]


async def test_a_template_that_fails_to_render_is_422(stack: tuple[Stack, TestClient]) -> None:
    gateway, client = stack
    gateway.gateway.api.templates.table.fold(b"loop/en/1", template_record(
        template_id="loop", variables=[], parts=[records.part("email", subject=None, html=None,
                                                              text="{{ 'a' * 10**9 }}")]))
    payload = await call(client, "POST", "/v1/templates/loop/versions/1/preview", {}, status=422)
    assert payload["error"] == "template_limit" and fields(payload) == ["variables"]


# --- preferences -------------------------------------------------------------------------------------------


async def test_preferences_are_read_put_and_patched(stack: tuple[Stack, TestClient]) -> None:
    gateway, client = stack
    assert (await call(client, "GET", "/v1/preferences/alice"))["email"] == "alice@example.com"
    await call(client, "GET", "/v1/preferences/olga", status=404)  # another tenant's
    await call(client, "GET", "/v1/preferences/nobody", status=404)
    put = await call(client, "PUT", "/v1/preferences/bob", {"email": "bob@example.com", "time_zone": "Asia/Tokyo",
                                                             "quiet_hours": {"start": "22:00", "end": "07:00"}},
                     status=202)
    assert (put["user_id"], put["tenant"], put["email"], put["quiet_hours"]) == \
           ("bob", "default", "bob@example.com", {"start": "22:00", "end": "07:00"})
    patched = await call(client, "PATCH", "/v1/preferences/alice",
                         {"category": "marketing", "channel": "email", "opted_out": True}, status=202)
    assert patched["email"] == "alice@example.com"  # the rest of the folded preferences kept
    assert patched["opt_outs"] == [{"category": "marketing", "channel": "email"}]
    assert [record["user_id"] for record in gateway.sent("PreferencesUpdated")] == ["bob", "alice"]


@pytest.mark.parametrize(("method", "body", "field"), [
    ("PUT", {"quiet_hours": {"start": "22:00", "end": "7:00"}}, "quiet_hours.end"),
    ("PUT", {"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours"),
    ("PUT", {"time_zone": "Asia/Tokio"}, "time_zone"),
    ("PUT", {"time_zone": "America"}, "time_zone"),  # a directory of the tz database
    ("PUT", {"email": "a\x00b"}, "email"),
    ("PUT", {"opt_outs": [{"category": "x", "channel": "fax"}]}, "opt_outs.0.channel"),
    ("PATCH", {"category": "x", "channel": "email"}, "opted_out"),
    ("PATCH", {"category": "", "channel": "email", "opted_out": True}, "category"),
])
async def test_preferences_of_bad_input_are_422_naming_the_field(stack: tuple[Stack, TestClient], method: str,
                                                                 body: dict[str, Any], field: str) -> None:
    gateway, client = stack
    assert fields(await call(client, method, "/v1/preferences/alice", body, status=422)) == [field]
    assert gateway.producer.sent == []


async def test_until_a_log_is_folded_its_endpoints_are_503(stack: tuple[Stack, TestClient]) -> None:
    gateway, client = stack
    gateway.gateway.api.templates.table = None
    gateway.gateway.api.cancellations.table = None
    await call(client, "GET", "/v1/templates", status=503)
    await call(client, "GET", "/v1/scheduled", status=503)


async def test_while_clickhouse_does_not_answer_its_endpoints_are_503(stack: tuple[Stack, TestClient]) -> None:
    _, client = stack
    for path in ("/v1/scheduled", "/v1/notifications/00000000-0000-0000-0000-000000000001"):
        response = await client.get(path, headers=KEY)
        assert response.status == 503 and response.headers["Retry-After"] == "1", path
        assert (await response.json())["error"] == "unavailable"


# --- auth and the document ---------------------------------------------------------------------------------


async def test_every_api_route_needs_the_key(stack: tuple[Stack, TestClient]) -> None:
    _, client = stack
    for method, path in (("GET", "/v1/templates"), ("PUT", WELCOME), ("GET", "/v1/preferences/alice"),
                         ("PATCH", "/v1/preferences/alice"), ("GET", "/v1/scheduled")):
        response = await client.request(method, path, headers={"X-API-Key": "wrong"})
        assert response.status == 401 and (await response.json())["error"] == "unauthorized", path


def test_every_route_is_in_the_document() -> None:
    app = Gateway(Settings(api_key="secret")).web_app()
    paths = document(app, "Herald", "test")["paths"]
    routes = {(route.method.lower(), route.resource.canonical) for route in app.router.routes()
              if route.method != "HEAD" and not isinstance(route.resource, web.StaticResource)}
    documented = {(method, path) for path, methods in paths.items() for method in methods}
    assert routes == documented
    assert {"/v1/notifications", "/v1/notifications/batch", "/v1/notifications/{id}", "/v1/templates",
            "/v1/preferences/{user_id}", "/v1/scheduled", "/v1/users/{user_id}/inbox"} <= set(paths)


def test_a_route_without_an_operation_is_not_documented_silently() -> None:
    app = Gateway(Settings(api_key="secret")).web_app()
    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/undocumented", undocumented)
    with pytest.raises(ValueError, match="/v1/undocumented"):
        document(app, "Herald", "test")


def test_the_document_describes_what_the_handlers_check() -> None:
    gateway = Gateway(Settings(api_key="secret", gateway_max_batch_recipients=7))
    doc = document(gateway.web_app(), "Herald", "test")
    schemas = doc["components"]["schemas"]

    def body_schema(path: str, method: str) -> dict[str, Any]:
        ref = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[1]]

    template = body_schema("/v1/templates/{template_id}/versions/{version}", "put")
    assert set(template["properties"]) == set(gateway.api and TemplateUpserted.model_fields) - {
        "template_id", "tenant", "version", "deleted", "updated_at"}
    assert template["additionalProperties"] is False
    assert body_schema("/v1/notifications/batch", "post")["properties"]["recipients"]["maxItems"] == 7
    version = next(p for p in doc["paths"]["/v1/templates/{template_id}/versions/{version}"]["get"]["parameters"]
                   if p["name"] == "version")
    assert (version["in"], version["required"], version["schema"]["minimum"]) == ("path", True, 1)
    responses = doc["paths"]["/v1/preferences/{user_id}"]["patch"]["responses"]
    assert {"202", "401", "413", "422", "429", "503"} <= set(responses)


async def test_the_document_is_served_without_the_key(stack: tuple[Stack, TestClient]) -> None:
    _, client = stack
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert (await response.json())["openapi"] == "3.1.0"


# --- the CLI builds with the same functions -----------------------------------------------------------------


def test_the_cli_refuses_what_the_api_refuses(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tooling import cli, producer

    published: list[Any] = []
    monkeypatch.setattr(producer, "publish", lambda spec, entries: published.extend(entries))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{k: v for k, v in records.template(digest={"window_s": 0}).items() if k != "updated_at"}]))
    result = CliRunner().invoke(cli.app, ["templates", "put", str(bad)])
    assert result.exit_code == 1 and "digest: window_s is 0; at least 1" in result.output
    good = tmp_path / "good.json"
    good.write_text(json.dumps({k: v for k, v in records.template().items() if k != "updated_at"}))
    assert CliRunner().invoke(cli.app, ["templates", "put", str(good)]).exit_code == 0
    result = CliRunner().invoke(cli.app, ["prefs", "set", "alice", "--time-zone", "Asia/Tokio"])
    assert result.exit_code == 1 and "time_zone: 'Asia/Tokio' is no IANA time zone" in result.output
    assert [key for key, _ in published] == [b"welcome/en/1"]
