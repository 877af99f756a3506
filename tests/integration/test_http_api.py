"""The gateway's HTTP API on a private stack (its own Kafka and ClickHouse, tests/stack.py) with only
the gateway running: templates and preferences written through it are folded back and served, the
scheduled list follows ClickHouse and the cancellations, and schemathesis, driven by /openapi.json,
finds no 5xx and no response that the document does not describe."""

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest

from gateway import dashboard
from schemas.models import LifecycleEvent
from sinks.clickhouse_client import connect
from sinks.event_sink import EVENTS_PROJECTION, event_to_row
from sinks.migrate import migrate_up
from streams.settings import Settings
from streams.topics import create_topics
from tests.stack import private_stack, require_stack_tools
from tooling.local import gateway_healthy, herald, infrastructure, retry_until_ready, start_process

# Examples per operation and phase: about a minute on a loaded 2-core machine.
SCHEMATHESIS_EXAMPLES = 10
# An event stream stays open: no response ever ends for schemathesis to check.
STREAM = "/v1/users/{user_id}/inbox/stream"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    require_stack_tools()
    with private_stack(tmp_path_factory.mktemp("api") / "herald") as settings:
        infrastructure("start")
        retry_until_ready(lambda: create_topics(settings), 60, "Kafka to create the topics", settings.data_dir / "kafka")
        retry_until_ready(lambda: migrate_up(settings), 60, "ClickHouse to migrate", settings.data_dir / "clickhouse")
        start_process(settings, "gateway", herald("gateway"), lambda: gateway_healthy(settings), 60,
                      "the gateway's /health to answer 200")
        yield settings


def url(settings: Settings, path: str) -> str:
    return f"http://{settings.gateway_host}:{settings.gateway_port}{path}"


def call(settings: Settings, method: str, path: str, status: int, **kwargs: Any) -> Any:
    response = httpx.request(method, url(settings, path), headers={"X-API-Key": settings.api_key}, timeout=30,
                             **kwargs)
    assert response.status_code == status, response.text
    return response.json()


def eventually(check: Callable[[], Any], timeout: float = 60) -> Any:
    """`check()` once it is truthy (the gateway folds what was just written; a 503 until it caught up)."""
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert value, "not within the timeout"
    return value


def answer(settings: Settings, path: str) -> Any:
    response = httpx.get(url(settings, path), headers={"X-API-Key": settings.api_key}, timeout=30)
    return response.json() if response.status_code == 200 else None


def test_a_template_put_through_the_api_is_listed_read_and_previewed(gateway: Settings) -> None:
    template = {"locale": "en", "variables": ["name"], "category": "account",
                "parts": [{"channel": "email", "subject": "Hi {{ name }}", "text": "Hello {{ name }}",
                           "html": "<p>Hello {{ name }}</p>"}]}
    call(gateway, "PUT", "/v1/templates/api-welcome/versions/1", 202, json=template)
    call(gateway, "PUT", "/v1/templates/api-welcome/versions/2", 202,
         json=template | {"parts": [template["parts"][0] | {"subject": "Welcome, {{ name }}"}]})
    listed = eventually(lambda: [t for t in (answer(gateway, "/v1/templates") or {"templates": []})["templates"]
                                 if t["template_id"] == "api-welcome" and t["versions"] == [1, 2]])
    assert listed[0]["category"] == "account"
    assert call(gateway, "GET", "/v1/templates/api-welcome/versions/1", 200)["parts"][0]["subject"] == "Hi {{ name }}"
    preview = call(gateway, "POST", "/v1/templates/api-welcome/versions/2/preview", 200,
                   json={"variables": {"name": "<Ada>"}})
    assert [(c["channel"], c["subject"], c["html"]) for c in preview["rendered"]] == \
           [("email", "Welcome, <Ada>", "<p>Hello &lt;Ada&gt;</p>")]
    refused = call(gateway, "PUT", "/v1/templates/api-welcome/versions/3", 422,
                   json=template | {"digest": {"window_s": 0}})
    assert [p["field"] for p in refused["detail"]] == ["digest"]


def test_preferences_put_and_patched_through_the_api_are_served(gateway: Settings) -> None:
    call(gateway, "PUT", "/v1/preferences/api-alice", 202, json={"email": "alice@example.com"})
    assert eventually(lambda: answer(gateway, "/v1/preferences/api-alice"))["email"] == "alice@example.com"
    call(gateway, "PATCH", "/v1/preferences/api-alice", 202,
         json={"category": "marketing", "channel": "email", "opted_out": True})
    patched = eventually(lambda: (found := answer(gateway, "/v1/preferences/api-alice")) and found["opt_outs"] and found)
    assert patched["opt_outs"] == [{"category": "marketing", "channel": "email"}]
    assert patched["email"] == "alice@example.com"
    refused = call(gateway, "PUT", "/v1/preferences/api-alice", 422,
                   json={"time_zone": "Asia/Tokio", "quiet_hours": {"start": "22:00", "end": "24:00"}})
    assert [p["field"] for p in refused["detail"]] == ["time_zone", "quiet_hours.end"]


def event(notification_id: uuid.UUID, status: str, at: datetime, detail: str | None = None) -> dict[str, Any]:
    return LifecycleEvent(event_id=uuid.uuid4(), notification_id=notification_id, tenant="default", status=status,
                          stage="route" if status == "scheduled" else "deliver", channel="email",
                          template_id="api-welcome", category="account", detail=detail, occurred_at=at).to_avro()


def test_scheduled_deliveries_are_listed_until_sent_or_cancelled(gateway: Settings) -> None:
    waiting, sent, cancelled = (uuid.uuid4() for _ in range(3))
    now = datetime.now(UTC).replace(microsecond=0)
    send_at = now + timedelta(hours=1)
    until = f"until {send_at:%Y-%m-%dT%H:%M:%S.%fZ}"  # as route writes it
    events = [event(waiting, "scheduled", now, until), event(sent, "scheduled", now, until),
              event(sent, "sent", now + timedelta(seconds=1)), event(cancelled, "scheduled", now, until)]
    clickhouse = connect(gateway)
    clickhouse.execute(EVENTS_PROJECTION.insert, [event_to_row(e) for e in events])
    clickhouse.disconnect()

    def listed() -> list[str]:
        return [d["notification_id"] for d in (answer(gateway, "/v1/scheduled") or {"deliveries": []})["deliveries"]]

    assert set(eventually(lambda: {str(waiting), str(cancelled)} <= set(listed()) and listed())) == \
           {str(waiting), str(cancelled)}
    [first] = [d for d in answer(gateway, "/v1/scheduled")["deliveries"] if d["notification_id"] == str(waiting)]
    assert datetime.fromisoformat(first["send_at"]) == send_at and first["channel"] == "email"
    call(gateway, "DELETE", f"/v1/notifications/{cancelled}", 202)
    assert eventually(lambda: (found := listed()) == [str(waiting)] and found)


def test_schemathesis_finds_no_server_error_and_nothing_the_document_does_not_say(gateway: Settings,
                                                                                   tmp_path: Path) -> None:
    assert dashboard.BUNDLE.exists(), "run `make assets`: without its bundle the dashboard's page is a 503"
    st = Path(sys.executable).parent / "st"
    junit = tmp_path / "junit.xml"
    done = subprocess.run(
        [str(st), "run", url(gateway, "/openapi.json"), "--header", f"X-API-Key: {gateway.api_key}",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
         "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--workers", "1", "--request-timeout", "30",
         "--exclude-path", STREAM, "--report", "junit", "--report-junit-path", str(junit)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-20_000:] + done.stderr[-5_000:]
    documented = {f"{method.upper()} {path}"
                  for path, methods in httpx.get(url(gateway, "/openapi.json")).json()["paths"].items()
                  for method in methods}
    cases = {case.get("name") for case in ElementTree.parse(junit).iter("testcase")}
    tested = {case for case in cases if case.split(" ")[0].isupper()}  # and "Stateful tests", the links between them
    # Every operation but the stream, and the document itself: schemathesis does not test the URL it loaded.
    assert tested == documented - {f"GET {STREAM}", "GET /openapi.json"}, (tested, documented)
