"""The chaos suite (the issue "Hostile input and faults"): faults injected into a real Herald stack
while notifications flow, and figures reported for each scenario (see harness.py).

Every scenario runs on one PRIVATE stack (tests/stack.py): its own Kafka, ClickHouse, mailbox,
workers and gateway on free loopback ports, under a temporary HERALD_DATA_DIR. Stopping its Kafka
or ClickHouse, or killing its workers, never touches deploy/local's servers on 127.0.0.1:9092/9000
or anybody using them. The stack is started once for the package (~30 s) and stopped after its last
test; each scenario first starts again whatever an earlier one left stopped.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.settings import get_settings
from tests.chaos import harness
from tests.chaos.harness import ChaosStack
from tests.stack import private_stack, require_stack_tools
from tooling.local import up

# Scenarios in the order they run: the one that leaves retries in flight (smtp_faults) goes last.
ORDER = ("test_worker_kills", "test_scale_churn", "test_recovery_time", "test_kafka_outage",
         "test_clickhouse_outage", "test_smtp_faults")
RECORDS: list[dict[str, Any]] = []


def in_chaos(item: pytest.Item) -> bool:
    return "tests/chaos/" in str(item.fspath)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chaos = [item for item in items if in_chaos(item)]
    for item in chaos:
        item.add_marker(pytest.mark.chaos)
        if harness.MODE == "off":
            item.add_marker(pytest.mark.skip(reason="HERALD_CHAOS=off"))
    if not chaos:
        return
    first = items.index(chaos[0])
    rest = [item for item in items if not in_chaos(item)]
    chaos.sort(key=lambda item: ORDER.index(item.module.__name__.rsplit(".", 1)[-1])
               if item.module.__name__.rsplit(".", 1)[-1] in ORDER else len(ORDER))
    items[:] = rest[:first] + chaos + rest[first:]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RECORDS:
        terminalreporter.section(f"chaos figures ({harness.MODE}, seed {harness.SEED})")
        for record in RECORDS:
            terminalreporter.write_line(json.dumps(record, default=str))


@pytest.fixture(scope="package")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    require_stack_tools()
    results = get_settings().data_dir / "chaos" / "results.jsonl"  # the suite's data dir, not the private one
    data_dir: Path = tmp_path_factory.mktemp("chaos") / "herald"
    with private_stack(data_dir) as settings:
        stack = ChaosStack(settings, results, RECORDS)
        stack.say(f"private stack under {data_dir} (Kafka {settings.kafka_bootstrap}), "
                  f"{harness.MODE} version, seed {harness.SEED}")
        up(settings, lambda line: None)
        stack.put_template()
        try:
            # Warm-up: one notification through the whole pipeline (the template is folded, the
            # groups settled) before any scenario measures anything.
            warm = stack.load(harness.new_tenant("warmup"), 1, 1).finish()
            assert stack.wait_delivered(warm, 120).delivered == 1, "the private stack does not deliver"
            yield stack
        finally:
            stack.close()
