"""The dashboard in headless Chromium (Debian's `chromium`, driven by Playwright) over a real run of 500
notifications: what the run adds to the page's figures equals what it adds to ClickHouse's counts of the
raw events, a timeline search finds a notification, the browser logs no error, and a screenshot is kept
in <data dir>/artifacts. Also: migration 0003's backfill, and the Grafana dashboard's SQL."""

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from clickhouse_driver import Client
from kafka import KafkaProducer
from playwright.sync_api import Browser, Page, sync_playwright

from sinks.clickhouse_client import connect
from sinks.migrate import migrate_down, migrate_up
from sinks.queries import timeline
from streams.settings import REPO_ROOT, Settings
from tests.integration.pipeline_helpers import produce, put_template, request, wait_for_statuses

TENANT = "default"  # the tenant of the one API key (gateway/auth.py)
SENT, REJECTED = 480, 20  # 500 notifications; 20 name no template, so the failures table has a reason
# What the page shows for the period it loaded, counted from the raw events with FINAL (each event once).
RAW_COUNT = ("SELECT count() FROM notification_events FINAL WHERE tenant = %(tenant)s AND status = %(status)s "
             "AND toStartOfMinute(event_time) >= toDateTime(%(since)s)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        message = "chromium not installed; `make browser` installs Debian's"
        if os.environ.get("HERALD_REQUIRE_SERVERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


def raw_count(clickhouse: Client, status: str, since: int) -> int:
    return clickhouse.execute(RAW_COUNT, {"tenant": TENANT, "status": status, "since": since})[0][0]


def figure(page: Page, element: str) -> int:
    return int(page.inner_text(element).replace(",", ""))


def loaded(page: Page, after: int = 0) -> int:
    """Waits for the page to draw figures newer than `after`; the first minute they cover (epoch s)."""
    page.wait_for_function(f"Number(document.body.dataset.loaded || 0) > {after}", timeout=30_000)
    return int(page.get_attribute("body", "data-since"))


def test_the_dashboard_shows_the_counts_of_a_run_and_finds_a_notification(
    pipeline: Settings, producer: KafkaProducer, clickhouse: Client, browser: Browser
) -> None:
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{pipeline.gateway_port}/dashboard")
    page.fill("#key", "not-the-key")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login-error:has-text('API key')")  # refused: the form again, with the reason
    errors.clear()  # the browser logs the 401 itself; it was the point of this step
    page.fill("#key", pipeline.api_key)
    page.click("#login button[type=submit]")
    loaded(page)

    # The tenant may have events of earlier tests: the run's own figures are what it adds. Over the last
    # 7 days, so that nothing leaves the period between the two readings.
    drawn = int(page.get_attribute("body", "data-loaded"))
    page.select_option("#minutes", str(7 * 24 * 60))
    since = loaded(page, drawn)
    before = figure(page, "#total-accepted"), raw_count(clickhouse, "accepted", since)

    run = uuid.uuid4().hex[:8]
    put_template("dashboard-check", [], "Hi", "Hello")
    time.sleep(2)  # validate and template fold herald.templates
    sent = produce(producer, [request(TENANT, f"dash-{run}-{i}", "dashboard-check", f"d{i}", f"d{i}@example.com", {})
                              for i in range(SENT)])
    rejected = produce(producer, [request(TENANT, f"dash-{run}-x{i}", f"missing-{run}", f"x{i}", f"x{i}@example.com",
                                          {}) for i in range(REJECTED)])
    found = wait_for_statuses(clickhouse, TENANT, sent, {"sent"}, 240)
    assert all("sent" in found.get(i, set()) for i in sent)
    found = wait_for_statuses(clickhouse, TENANT, rejected, {"rejected"}, 120)
    assert all("rejected" in found.get(i, set()) for i in rejected)

    # The page's figures come from the rollups; ClickHouse's raw events with FINAL must say the same.
    deadline = time.monotonic() + 60
    while True:
        drawn = int(page.get_attribute("body", "data-loaded"))
        page.click("#refresh")
        since = loaded(page, drawn)
        shown, counted = figure(page, "#total-accepted"), raw_count(clickhouse, "accepted", since)
        if shown - before[0] == SENT + REJECTED or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert (shown - before[0], counted - before[1]) == (SENT + REJECTED, SENT + REJECTED)

    drawn = int(page.get_attribute("body", "data-loaded"))
    page.select_option("#minutes", "60")
    loaded(page, drawn)
    assert figure(page, "#funnel [data-channel=email] [data-step=sent] .count") >= SENT
    assert figure(page, "#total-sent") >= SENT
    assert page.locator("#throughput canvas").count() >= 1 and page.locator("#latency canvas").count() >= 1
    assert page.locator("#failures tbody tr", has_text="unknown_template").count() >= 1

    page.fill("#notification-id", sent[0])
    page.click("#search button[type=submit]")
    page.wait_for_selector("#timeline tbody tr[data-status=sent]", timeout=15_000)
    assert page.locator("#timeline tbody tr[data-status=accepted]").count() == 1
    assert timeline(clickhouse, uuid.UUID(sent[0]), "another-tenant") == []  # what the search finds is the tenant's

    artifacts = pipeline.data_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
    assert errors == []
    page.close()


def test_the_migration_backfills_the_rollups_from_the_stored_events_once_each(clickhouse: Client,
                                                                              settings: Settings) -> None:
    """0003's INSERT SELECT … FINAL: rows stored before the views exist, a repeated one among them, are
    counted once; the views count what is inserted after."""
    isolated = settings.model_copy(update={"clickhouse_database": f"herald_rollups_{uuid.uuid4().hex[:8]}"})
    migrate_up(isolated)
    client = connect(isolated)
    try:
        now = datetime.now(timezone.utc).replace(microsecond=0)

        def row(status: str, latency: int | None) -> tuple[Any, ...]:
            return (uuid.uuid4(), uuid.uuid4(), "acme", "deliver", status, "email", "smtp", "t", "c", "normal", 0, "",
                    "", latency, now, int(now.timestamp() * 1000))

        insert = ("INSERT INTO notification_events (event_id, notification_id, tenant, stage, status, channel, "
                  "provider, template, category, priority, attempt, error_code, detail, latency_ms, event_time, "
                  "event_time_ms) VALUES")
        sent = [row("sent", 100 * i) for i in range(1, 6)]
        assert migrate_down(isolated) == ["0003_dashboard_rollups"]
        client.execute(insert, sent + sent[:1] + [row("failed", None)])  # one event stored twice
        assert migrate_up(isolated) == ["0003_dashboard_rollups"]
        client.execute(insert, [row("sent", 600)])  # after: through the view
        counts = dict(client.execute("SELECT status, sum(events) FROM events_per_minute WHERE tenant = 'acme' "
                                     "GROUP BY status"))
        assert counts == {"sent": 6, "failed": 1}
        [(quantiles,)] = client.execute("SELECT quantilesMerge(0.5, 0.95, 0.99)(latency) FROM latency_per_minute "
                                        "WHERE tenant = 'acme' AND status = 'sent'")
        assert 300 <= quantiles[0] <= 400 and quantiles[2] >= 500  # over 100…600 ms, the repeated 100 once
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {isolated.clickhouse_database}")
        client.disconnect()


def test_every_grafana_panel_reads_the_rollups_and_runs(clickhouse: Client, settings: Settings) -> None:
    """deploy/grafana/herald.json with the data source's macros expanded as the plugin does, on this server."""
    dashboard = json.loads((REPO_ROOT / "deploy/grafana/herald.json").read_text())
    now = int(time.time())
    queries = [t["rawSql"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(queries) == len(dashboard["panels"]) + 1
    for sql in queries:
        assert "notification_events" not in sql and ("events_per_minute" in sql or "latency_per_minute" in sql)
        expanded = (sql.replace("$__timeFilter(minute)", f"minute >= toDateTime({now - 3600}) AND minute <= toDateTime({now})")
                    .replace("${tenant}", TENANT).replace("herald.", f"{settings.clickhouse_database}."))
        clickhouse.execute(expanded)  # raises on SQL this server does not take
