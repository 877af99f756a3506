"""tooling/local.py: `herald up` waits out a server that is still coming up, and says so when it never does.

A brand-new broker answers the first describe_groups with CoordinatorNotAvailable (its
__consumer_offsets does not exist yet): that must read as "not ready", never crash `herald up`.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clickhouse_driver.errors import NetworkError
from kafka.errors import (CoordinatorLoadInProgressError, CoordinatorNotAvailableError, GroupAuthorizationFailedError,
                          KafkaTimeoutError, NodeNotReadyError, NotCoordinatorError)

from streams.settings import Settings
from tooling import local
from tooling.local import NotReady, not_ready_yet, retry_until_ready, wait_until, workers_ready

GROUPS = ["herald-ingest", "herald-route"]


def group(state: str, members: int) -> dict[str, Any]:
    return {"group_state": state, "members": [{"member_id": f"m{i}"} for i in range(members)]}


def fake_admin(describe: Callable[[list[str]], dict[str, Any]]) -> type:
    class FakeAdmin:
        closed = False

        def __init__(self, **config: Any) -> None:
            assert config["bootstrap_timeout_ms"] <= 5000  # one probe stays short

        def describe_groups(self, group_ids: list[str]) -> dict[str, Any]:
            return describe(group_ids)

        def close(self) -> None:
            FakeAdmin.closed = True

    return FakeAdmin


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    monkeypatch.setattr(local, "worker_groups", lambda settings: GROUPS)


@pytest.mark.parametrize("error", [CoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError,
                                   NodeNotReadyError, KafkaTimeoutError])
def test_workers_not_ready_while_the_broker_cannot_tell(monkeypatch: pytest.MonkeyPatch, error: type) -> None:
    def describe(group_ids: list[str]) -> dict[str, Any]:
        raise error("FindCoordinatorResponse error for GROUP/herald-ingest")

    admin = fake_admin(describe)
    monkeypatch.setattr(local, "KafkaAdminClient", admin)
    assert workers_ready(Settings()) is False
    assert admin.closed


def test_workers_not_ready_when_the_broker_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(**config: Any) -> None:
        raise KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9092")

    monkeypatch.setattr(local, "KafkaAdminClient", unreachable)
    assert workers_ready(Settings()) is False


def test_workers_ready_once_every_group_is_stable_with_members(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([
        {"herald-ingest": group("Dead", 0), "herald-route": group("Dead", 0)},  # no group yet
        {"herald-ingest": group("Stable", 1), "herald-route": group("PreparingRebalance", 1)},
        {"herald-ingest": group("Stable", 1), "herald-route": group("Stable", 1)},
    ])

    def describe(group_ids: list[str]) -> dict[str, Any]:
        assert group_ids == GROUPS
        return next(answers)

    monkeypatch.setattr(local, "KafkaAdminClient", fake_admin(describe))
    assert [workers_ready(Settings()) for _ in range(3)] == [False, False, True]


def test_other_errors_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def describe(group_ids: list[str]) -> dict[str, Any]:
        raise GroupAuthorizationFailedError("herald-ingest")

    monkeypatch.setattr(local, "KafkaAdminClient", fake_admin(describe))
    with pytest.raises(GroupAuthorizationFailedError):
        workers_ready(Settings())


def test_not_ready_yet() -> None:
    assert not_ready_yet(CoordinatorNotAvailableError())
    assert not_ready_yet(ConnectionRefusedError())
    assert not_ready_yet(NetworkError("Code: 210. Connection refused (127.0.0.1:9000)"))
    assert not not_ready_yet(GroupAuthorizationFailedError())
    assert not not_ready_yet(ValueError("a bug"))


def test_retry_until_ready_waits_out_not_ready_errors() -> None:
    failures = [NodeNotReadyError("controller"), NetworkError("Connection refused")]

    def create() -> list[str]:
        if failures:
            raise failures.pop(0)
        return ["herald.requests"]

    assert retry_until_ready(create, 60, "Kafka to create the topics", Path("/logs")) == ["herald.requests"]


def test_retry_until_ready_raises_a_bug_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        retry_until_ready(broken, 60, "Kafka to create the topics", Path("/logs"))
    assert len(calls) == 1


def test_retry_until_ready_gives_up_saying_what_and_where() -> None:
    def refused() -> None:
        raise NetworkError("Connection refused")

    with pytest.raises(NotReady, match=r"after 0s waiting for ClickHouse to run the migrations .*"
                                       r"Connection refused.*logs in /data/clickhouse/logs"):
        retry_until_ready(refused, 0, "ClickHouse to run the migrations", Path("/data/clickhouse/logs"))


def test_wait_until_gives_up_with_the_log(tmp_path: Path) -> None:
    log = tmp_path / "workers.log"
    log.write_text("starting\nherald: the ingest worker exited with 1\n")
    with pytest.raises(NotReady) as raised:
        wait_until(lambda: False, 0, "workers: every stage's consumer group Stable with members", log)
    message = str(raised.value)
    assert "waiting for workers: every stage's consumer group Stable with members" in message
    assert f"logs: {log}" in message
    assert message.endswith("herald: the ingest worker exited with 1")
