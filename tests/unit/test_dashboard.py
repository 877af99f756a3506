"""The dashboard's figures from rollup rows (sinks/rollups.py) and its routes (gateway/dashboard.py):
the page is public, the data needs the key and is the caller's tenant's."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import dashboard
from gateway.server import Gateway
from sinks import rollups
from streams.settings import Settings

NOW = 1_700_000_130  # 30 s into a minute


class Rows:
    """A ClickHouse client that answers each of rollups' queries with fixed rows."""

    def __init__(self, answers: dict[str, list[tuple[Any, ...]]]) -> None:
        self.answers = answers
        self.params: list[dict[str, Any]] = []

    def execute(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        self.params.append(params)
        return self.answers[query]


def test_minutes_cover_the_period_minute_by_minute() -> None:
    assert rollups.minutes(125, 300) == [120, 180, 240, 300]
    assert rollups.minutes(120, 120) == [120]


def test_series_put_each_count_at_its_minute_and_zero_elsewhere() -> None:
    rows = [(180, "sent", 4), (60, "sent", 9), (240, "accepted", 2), (240, "retried", 5)]
    assert rollups.series(rows, [120, 180, 240], ["accepted", "sent"]) == {"accepted": [0, 0, 2], "sent": [0, 4, 0]}


def test_summary_draws_the_funnel_failures_throughput_and_latency() -> None:
    minute = NOW - NOW % 60
    client = Rows({
        rollups.TOTALS: [("", "accepted", 10), ("", "rejected", 2), ("email", "routed", 8), ("email", "sent", 7),
                         ("email", "opened", 3), ("sms", "routed", 1), ("email", "retried", 4)],
        rollups.FAILURES: [("", "rejected", "unknown_template", 2)],
        rollups.PER_MINUTE: [(minute, "accepted", 10), (minute - 60, "sent", 7)],
        rollups.LATENCY: [(minute, [10.0, 50.0, 90.0])],
    })
    found = rollups.summary(client, "acme", 180, now=NOW)
    assert all(p["tenant"] == "acme" and p["since"] == minute - 180 for p in client.params)
    assert found["accepted"] == 10
    assert found["funnel"] == {"email": {"routed": 8, "sent": 7, "delivered": 0, "opened": 3, "clicked": 0},
                               "sms": {"routed": 1, "sent": 0, "delivered": 0, "opened": 0, "clicked": 0}}
    assert found["failures"] == [{"channel": "", "status": "rejected", "reason": "unknown_template", "count": 2}]
    assert found["minutes"] == [minute - 180, minute - 120, minute - 60, minute]
    assert found["throughput"]["accepted"] == [0, 0, 0, 10] and found["throughput"]["sent"] == [0, 0, 7, 0]
    assert found["latency"] == {"p50": [None, None, None, 10.0], "p95": [None, None, None, 50.0],
                                "p99": [None, None, None, 90.0]}


# --- routes, with ClickHouse replaced ------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = Gateway(Settings(api_key="secret")).web_app()
    app.on_startup.clear()  # the Kafka producer and the inbox follower; nothing below needs them
    app.on_cleanup.clear()
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_the_page_and_its_bundle_need_no_key(client: TestClient) -> None:
    page = await client.get("/dashboard")
    if not dashboard.BUNDLE.exists():  # `make assets` not run: a clear 503, not a blank page
        assert page.status == 503 and (await page.json())["error"] == "dashboard_not_built"
        return
    assert page.status == 200 and "/dashboard/static/dist/dashboard.js" in await page.text()
    bundle = await client.get("/dashboard/static/dist/dashboard.js")
    assert bundle.status == 200 and "u-axis" in await bundle.text()  # uPlot, bundled


@pytest.mark.parametrize("path", ["/dashboard/api/summary", f"/dashboard/api/notifications/{uuid.uuid4()}"])
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
async def test_the_data_needs_the_key(client: TestClient, path: str, headers: dict) -> None:
    response = await client.get(path, headers=headers)
    assert response.status == 401


async def test_the_summary_is_the_callers_tenants(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    drawn = {"tenant": "default", "since": 0, "until": 900, "accepted": 1, "funnel": {"email": {"sent": 1}},
             "failures": [], "minutes": [0], "throughput": {"sent": [1]}, "latency": {"p50": [None]}}
    monkeypatch.setattr(dashboard, "summary", lambda ch, tenant, seconds: asked.append((tenant, seconds)) or drawn)
    response = await client.get("/dashboard/api/summary?minutes=15", headers={"X-API-Key": "secret"})
    assert response.status == 200 and await response.json() == drawn
    assert asked == [("default", 900)]


@pytest.mark.parametrize("minutes", ["0", "-5", "x", str(dashboard.MAX_MINUTES + 1)])
async def test_a_bad_period_is_422(client: TestClient, minutes: str) -> None:
    response = await client.get(f"/dashboard/api/summary?minutes={minutes}", headers={"X-API-Key": "secret"})
    assert response.status == 422 and [p["field"] for p in (await response.json())["detail"]] == ["minutes"]


async def test_a_timeline_is_searched_within_the_callers_tenant(client: TestClient,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = uuid.uuid4()
    asked = []
    monkeypatch.setattr(dashboard, "timeline", lambda ch, nid, tenant: asked.append((nid, tenant)) or [])
    response = await client.get(f"/dashboard/api/notifications/{wanted}", headers={"X-API-Key": "secret"})
    assert response.status == 404 and asked == [(wanted, "default")]
    response = await client.get("/dashboard/api/notifications/not-a-uuid", headers={"X-API-Key": "secret"})
    assert response.status == 422
