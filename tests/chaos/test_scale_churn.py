"""Scenario 5: two workers per stage, and every 20 s one more joins and one leaves, while notifications flow.

Beside the supervisor's worker of each stage, the test runs a second one; each cycle starts a new
second worker of every stage, waits until it is in its stage's consumer group (at most 90 s: six
workers starting at once on two cores take 10-20 s, more under load), then stops the old one (SIGTERM: a graceful
scale-in that leaves the group). Every cycle therefore rebalances every group twice, deliver's and
the ClickHouse sink's included.

Two tests read the one run: nothing lost or stored twice (the guarantee), and no worker crashed on
the way (the stages' robustness to rebalances).
"""

import subprocess
import time

import pytest

from tests.chaos.harness import ChaosStack, check, elapsed, new_tenant, poll, sized, stop_workers

CYCLES = sized(2, 10)
PERIOD_S = 20.0
# Six workers starting at once next to a dozen others on two cores can take a minute to be in.
JOIN_TIMEOUT_S = 90.0
N = sized(3_000, 10_000)
# The load spans the first join, the cycles and the last leave.
RATE = N / ((CYCLES + 2) * PERIOD_S)


@pytest.fixture(scope="module")
def churn(chaos_stack: ChaosStack) -> dict[str, tuple[bool, str]]:
    stack = chaos_stack
    stack.ensure_up()
    from agents.registry import STAGES

    stages = list(STAGES)
    tenant = new_tenant("churn")
    supervisor = stack.supervisor_log()
    broker = stack.broker_log()
    started = time.monotonic()
    load = stack.load(tenant, N, RATE)
    joins: list[float | None] = []  # seconds until every group had its new member (None: not in time)
    crashed: list[str] = []  # second workers that exited before they were told to
    running: list[tuple[str, subprocess.Popen[bytes]]] = []
    joining: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for cycle in range(CYCLES + 1):
            began = time.monotonic()
            joining = [(stage, stack.extra_worker(stage, f"churn-{stage}-{cycle}")) for stage in stages]
            expected = 2 if not running else 3
            joined = poll(lambda: min(stack.group_sizes(stages).values()) >= expected, timeout=JOIN_TIMEOUT_S)
            joins.append(elapsed(began) if joined else None)
            crashed += [stage for stage, worker in running if worker.poll() is not None]
            stop_workers([worker for _, worker in running])  # the old second workers leave
            running, joining = joining, []
            stack.say(f"churn cycle {cycle}/{CYCLES}: joined in {joins[-1]}s; groups {stack.group_sizes(stages)}")
            if cycle < CYCLES:
                time.sleep(max(0.0, began + PERIOD_S - time.monotonic()))
        crashed += [stage for stage, worker in running if worker.poll() is not None]
    except BaseException:
        load.stop()
        raise
    finally:
        stop_workers([worker for _, worker in running + joining])
    ids = load.finish()
    tally = stack.wait_delivered(ids, timeout=sized(300, 600), what="churn: ")
    timelines = stack.timeline_gaps(tenant, ids, timeout=60)
    crashed += supervisor.crashes()
    rebalances = broker.rebalances()

    return stack.report("scale_churn", {
        "notifications": len(ids), "cycles": CYCLES, "stages": len(stages), "join_s": joins,
        "delivered": tally.delivered, "lost": tally.lost, "stored_twice": tally.stored_twice,
        "resends": tally.resends, **timelines, "rebalances": len(rebalances), "workers_crashed": crashed,
        "duration_s": elapsed(started),
    }, {
        "lost": (tally.lost == 0, f"{tally.lost} of {len(ids)} never reached the mailbox"),
        "stored_twice": (tally.stored_twice == 0, f"{tally.stored_twice} stored twice"),
        "timelines": (timelines["events_missing"] == 0, f"lifecycle events missing: {timelines}"),
        "joined": (None not in joins, f"a new worker was not in its group within {JOIN_TIMEOUT_S:.0f}s: {joins}"),
        "no_crash": (not crashed, f"workers that crashed during the churn: {crashed}"),
    }, verify=False)


def test_workers_joining_and_leaving_every_20_s_lose_nothing(churn: dict[str, tuple[bool, str]]) -> None:
    check(churn, ["lost", "stored_twice", "timelines"])


def test_no_worker_crashes_while_workers_join_and_leave(churn: dict[str, tuple[bool, str]]) -> None:
    check(churn, ["joined", "no_crash"])
