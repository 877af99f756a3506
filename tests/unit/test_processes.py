"""tooling/processes.py: replicas of a stage get static membership ids of their own, and a replica's
process runs one worker (it does not supervise replicas of its own)."""

from typing import Any

import pytest

from tooling import processes


def test_each_replica_has_its_own_static_member_id_and_the_first_keeps_the_old_one() -> None:
    ids = {processes.instance_id("route", replica) for replica in range(4)}
    assert len(ids) == 4 and processes.instance_id("route") == processes.instance_id("route", 0)
    assert processes.instance_id("route", 0) != processes.instance_id("deliver", 0)


def test_a_replica_runs_one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[dict[str, Any]] = []
    monkeypatch.setenv("HERALD_WORKER_REPLICAS", "4")
    monkeypatch.setattr(processes.subprocess, "Popen", lambda command, env: started.append({"command": command, "env": env}))
    processes.start_stage("deliver", "warn", 2)
    [child] = started
    assert child["command"][-4:] == ["--stage", "deliver", "--loglevel", "warn"]
    assert child["env"]["HERALD_WORKER_REPLICAS"] == "1"
    assert child["env"]["HERALD_WORKER_INSTANCE_ID"] == processes.instance_id("deliver", 2)
