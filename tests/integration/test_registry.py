"""The pipeline with a schema registry configured (issue #10 item 7): every Herald process frames
Avro the Confluent way (00, 4-byte schema id, body), and a plain client — kafka-python, fastavro and
the registry's REST API, no Herald code — produces requests the same way, half of them with a newer
NotificationRequest schema (one more field, with a default) that it registers itself.

The registry is HERALD_TEST_SCHEMA_REGISTRY_URL when set (any Confluent-compatible registry:
Apicurio's ccompat API, Karapace, Confluent's); otherwise the in-memory stand-in of
tests/registry_standin.py, since no real registry can be installed on these machines (see
docs/decisions.md, "Schema registry").
"""

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas.serde import SchemaRegistry, current_schemas
from sinks.clickhouse_client import connect
from streams.codec import default_serde
from streams.ids import notification_id
from streams.kafka_clients import client_kwargs
from streams.settings import REPO_ROOT, Settings
from streams.topics import ACCEPTED, REQUESTS, create_topics
from tests.integration.pipeline_helpers import REQUEST_SCHEMA_JSON, Mail, new_tenant, put_template, request
from tests.integration.pipeline_helpers import wait_for_statuses
from tests.registry_standin import REGISTRY_CT, serve_registry
from tests.stack import private_stack, require_stack_tools
from tooling.local import infrastructure, up

SUBJECT = "io.herald.NotificationRequest"  # RecordNameStrategy, as Herald registers it
# What a newer version of a producing service writes: one more field, with a default (backward compatible).
NEWER_REQUEST = {**REQUEST_SCHEMA_JSON,
                 "fields": [*REQUEST_SCHEMA_JSON["fields"],
                            {"name": "origin", "type": "string", "default": "", "doc": "the producing service"}]}


@pytest.fixture
def registry_url() -> Iterator[str]:
    if url := os.environ.get("HERALD_TEST_SCHEMA_REGISTRY_URL"):
        yield url
        return
    servers = serve_registry()
    yield next(servers).url
    servers.close()


@pytest.fixture
def registered(tmp_path: Path, registry_url: str) -> Iterator[Settings]:
    """A running private stack with HERALD_SCHEMA_REGISTRY_URL set, its schemas registered first with
    `herald schemas register`."""
    require_stack_tools()
    with private_stack(tmp_path / "herald", {"HERALD_SCHEMA_REGISTRY_URL": registry_url}) as settings:
        default_serde.cache_clear()  # this process's serde must frame for the registry too
        try:
            infrastructure("start")
            create_topics(settings)
            done = subprocess.run([sys.executable, "-m", "tooling.cli", "schemas", "register"], cwd=REPO_ROOT,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 and f"{len(current_schemas())} subjects registered" in done.stdout, done
            put_template("registry-welcome", ["name"], "Welcome, {{ name }}!", "Hello {{ name }}.")
            up(settings, lambda line: None)
            yield settings
        finally:
            default_serde.cache_clear()


def register(url: str, subject: str, schema: dict[str, Any]) -> int:
    """POST the schema as any client of a Confluent-compatible registry does; its id."""
    response = httpx.post(f"{url}/subjects/{subject}/versions", json={"schema": json.dumps(schema)},
                          headers={"Content-Type": REGISTRY_CT, "Accept": REGISTRY_CT}, timeout=10)
    response.raise_for_status()
    return response.json()["id"]


def confluent_frame(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()


def test_100_confluent_framed_requests_from_a_plain_client_flow_end_to_end(registered: Settings) -> None:
    settings = registered
    url = settings.schema_registry_url
    assert url
    current_id = register(url, SUBJECT, REQUEST_SCHEMA_JSON)
    newer_id = register(url, SUBJECT, NEWER_REQUEST)
    assert newer_id != current_id

    tenant = new_tenant()
    requests = [request(tenant, f"r-{i}", "registry-welcome", f"reg-user-{i}", f"r{i}@example.com",
                        {"name": f"Registry {i}"}) for i in range(100)]
    producer = KafkaProducer(**client_kwargs(settings), acks="all", linger_ms=10)
    try:
        for i, r in enumerate(requests):
            value = (confluent_frame(current_id, REQUEST_SCHEMA_JSON, r) if i % 2 == 0
                     else confluent_frame(newer_id, NEWER_REQUEST, {**r, "origin": "billing-v2"}))
            producer.send(REQUESTS.name, key=r["idempotency_key"].encode(), value=value)
        producer.flush()
    finally:
        producer.close()
    ids = [str(notification_id(r["tenant"], r["idempotency_key"], "")) for r in requests]

    mail = Mail(settings, ids)
    received = mail.wait_for_all(timeout=240)
    assert len(received) == 100, f"{100 - len(received)} of 100 never reached the mailbox"
    assert max(received.values()) == 1
    assert mail.message(ids[1], settings.email_domain)["Subject"] == "Welcome, Registry 1!"  # a newer-schema one
    found = wait_for_statuses(connect(settings), tenant, ids, {"accepted", "sent"}, timeout=120)
    assert all({"accepted", "sent"} <= found.get(i, set()) for i in ids)

    # Between the stages too, records are framed with the registry's ids.
    bundle_id = SchemaRegistry(url).register("io.herald.RecordBundle", current_schemas()["RecordBundle"])
    consumer = KafkaConsumer(**client_kwargs(settings), enable_auto_commit=False, consumer_timeout_ms=10_000)
    try:
        partitions = [TopicPartition(ACCEPTED.name, p) for p in consumer.partitions_for_topic(ACCEPTED.name)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        message = next(iter(consumer))
    finally:
        consumer.close()
    assert message.value[:5] == b"\x00" + bundle_id.to_bytes(4, "big")
