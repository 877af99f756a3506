"""Every stage worker answers /healthz, /readyz and /metrics (streams/health.py) once `herald up` returned."""

import re
import time

import httpx
from kafka import KafkaProducer

from agents.registry import STAGES
from streams.health import port_file
from streams.settings import Settings
from tests.integration.pipeline_helpers import new_tenant, produce, put_template, request


def url(settings: Settings, stage: str, path: str) -> str:
    return f"http://{settings.health_host}:{port_file(settings, stage).read_text()}{path}"


def records_in(settings: Settings, stage: str) -> float:
    text = httpx.get(url(settings, stage, "/metrics"), timeout=5).text
    return sum(float(v) for v in re.findall(r'^herald_stage_records_in_total\{[^}]*\} (\S+)$', text, re.MULTILINE))


def test_every_worker_is_alive_ready_and_counts_what_it_takes(pipeline: Settings, producer: KafkaProducer) -> None:
    for stage in STAGES:
        assert httpx.get(url(pipeline, stage, "/healthz"), timeout=5).status_code == 200, stage
        deadline = time.monotonic() + 60
        while httpx.get(url(pipeline, stage, "/readyz"), timeout=5).status_code != 200:
            assert time.monotonic() < deadline, f"{stage} not ready"
            time.sleep(0.5)
    before = {stage: records_in(pipeline, stage) for stage in ("ingest", "validate", "template", "route", "deliver")}
    put_template("health-check", [], "Hi", "Hello")
    time.sleep(2)
    tenant = new_tenant()
    produce(producer, [request(tenant, f"health-{i}", "health-check", f"h{i}", f"h{i}@example.com", {}) for i in range(20)])
    deadline = time.monotonic() + 60
    while any(records_in(pipeline, stage) < before[stage] + 20 for stage in before):
        assert time.monotonic() < deadline, {stage: records_in(pipeline, stage) - before[stage] for stage in before}
        time.sleep(1)
    metrics = httpx.get(url(pipeline, "deliver", "/metrics"), timeout=5).text
    assert re.search(r'^herald_stage_consumer_lag\{partition="\d+",stage="deliver",topic="herald\.deliver\.email"\} \d',
                     metrics, re.MULTILINE), "no lag gauge for deliver's email topic"
