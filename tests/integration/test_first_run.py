"""The first `make run` on a machine works: `herald up` from an empty data directory, then the demo.

The test starts a second Kafka and ClickHouse on free loopback ports with a fresh HERALD_DATA_DIR
(Kafka's jars come from the usual cache), so the broker is brand-new: it has no __consumer_offsets,
and the first describe_groups of `herald up`'s readiness check meets CoordinatorNotAvailable, the
race that used to crash the first run. The servers of deploy/local that other tests use are not
touched: every pid file, log and data file of this stack lives under the test's temporary directory.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient

from sinks.clickhouse_client import connect
from streams.settings import REPO_ROOT, Settings
from streams.topics import CATALOG
from tests.stack import private_stack, require_stack_tools
from tooling.local import gateway_healthy, infrastructure, up, workers_ready


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Settings]:
    """Settings and environment (inherited by the scripts and Herald's processes) of a stack that
    has never run; everything it started is stopped at the end."""
    require_stack_tools()
    with private_stack(tmp_path / "herald") as settings:
        yield settings


def herald(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tooling.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_first_run_from_an_empty_data_directory(fresh_stack: Settings) -> None:
    settings = fresh_stack
    infrastructure("start")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert "__consumer_offsets" not in admin.list_topics()  # brand-new: no group coordinator yet
    finally:
        admin.close()
    assert workers_ready(settings) is False  # "not yet", not CoordinatorNotAvailableError

    said: list[str] = []
    up(settings, said.append)

    assert said[-1] == f"gateway on http://{settings.gateway_host}:{settings.gateway_port}"
    assert workers_ready(settings) and gateway_healthy(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert {spec.name for spec in CATALOG} <= set(admin.list_topics())
    finally:
        admin.close()
    tables = {name for (name,) in connect(settings).execute(f"SHOW TABLES FROM {settings.clickhouse_database}")}
    assert {"notification_events", "dead_letters", "schema_migrations"} <= tables

    # The rest of `make run`: the demo waits for its batch in ClickHouse before the report.
    demo = REPO_ROOT / "deploy" / "local" / "demo"
    herald("templates", "put", str(demo / "templates.json"))
    herald("prefs", "set", "carol", "--email", "carol@example.com")
    herald("prefs", "set", "dave", "--email", "dave@example.com", "--opt-out", "*:email")
    output = herald("demo", str(demo / "batch.json"))
    batch_size = len(json.loads((demo / "batch.json").read_text())["recipients"])
    assert f"all {batch_size} notifications at a final status" in output, output
    assert "sent" in output.split("lifecycle events")[1], output
