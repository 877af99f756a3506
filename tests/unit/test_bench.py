"""tooling/bench.py: which process is which stage, and the CPU each one used during the run."""

import sys

from tooling.bench import cpu_by_role, process_role
from tooling.processes import stage_command


def test_a_stage_worker_is_its_stage() -> None:
    assert process_role(stage_command("validate", "warn")) == "validate"
    assert process_role(stage_command("some-new-stage", "info")) == "some-new-stage"


def test_the_gateway() -> None:
    assert process_role([sys.executable, "-m", "tooling.cli", "gateway"]) == "gateway"


def test_what_is_not_measured() -> None:
    python = [sys.executable, "-m", "tooling.cli"]
    assert process_role([*python, "worker", "--stage", "all"]) is None  # the supervisor only waits
    assert process_role([*python, "worker"]) is None
    assert process_role([*python, "mailbox"]) is None
    assert process_role([sys.executable, "-m", "pytest", "--stage", "ingest"]) is None
    assert process_role([""]) is None


def test_cpu_by_role_sums_processes_and_skips_those_that_exited() -> None:
    processes = {10: "ingest", 11: "deliver", 12: "deliver", 13: "gateway"}
    before = {10: 1.0, 11: 2.0, 12: 3.0, 13: 0.5}
    after = {10: 1.5, 11: 4.0, 12: 3.25}  # the gateway exited meanwhile
    assert cpu_by_role(processes, before, after) == {"ingest": 0.5, "deliver": 2.25, "gateway": 0.0}
