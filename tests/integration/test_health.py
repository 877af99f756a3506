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
    produce(producer, [request(tenant, f"health-{i}", "health-check", f"h{i}", f"h{i}@example.com", {}) for i in range(20)]
            + [request(tenant, "health-unknown", "no-such-template", "h-x", "hx@example.com", {})])
    deadline = time.monotonic() + 60
    while any(records_in(pipeline, stage) < before[stage] + 20 for stage in before):
        assert time.monotonic() < deadline, {stage: records_in(pipeline, stage) - before[stage] for stage in before}
        time.sleep(1)
    metrics = httpx.get(url(pipeline, "deliver", "/metrics"), timeout=5).text
    assert re.search(r'^herald_stage_consumer_lag\{partition="\d+",stage="deliver",topic="herald\.deliver\.email"\} \d',
                     metrics, re.MULTILINE), "no lag gauge for deliver's email topic"
    # Outcomes by reason, provider latency, and the time from the request to each stage's events.
    wait_for_metric(pipeline, "deliver", "herald_provider_seconds_count", 20, {"channel": "email", "result": "sent"})
    wait_for_metric(pipeline, "deliver", "herald_stage_since_request_seconds_count", 20,
                    {"stage": "deliver", "status": "sent"})
    wait_for_metric(pipeline, "validate", "herald_stage_outcomes_total", 1,
                    {"reason": "unknown_template", "stage": "validate", "status": "rejected"})


def wait_for_metric(settings: Settings, worker: str, name: str, at_least: float, labels: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while (value := metric(httpx.get(url(settings, worker, "/metrics"), timeout=5).text, name, labels)) < at_least:
        assert time.monotonic() < deadline, f"{worker}: {name}{labels} is {value}, expected at least {at_least}"
        time.sleep(1)

def metric(text: str, name: str, labels: dict[str, str]) -> float:
    """The value of one sample (labels in Prometheus' sorted order), 0 when it is not there."""
    label_text = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    found = re.search(rf'^{re.escape(name)}\{{{re.escape(label_text)}\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
