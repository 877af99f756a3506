"""Scenario 6: how long a stage is out after its worker is SIGKILLed.

A trickle of notifications flows; the stage's worker is killed; the recovery time is from the kill
to the first notification produced after the kill that made it through: delivered to the mailbox,
or for track (the ClickHouse sink) its `sent` event in ClickHouse. The figures also say when the
supervisor had the new worker running, and why the broker rebalanced the group meanwhile.

The supervisor gives each stage's worker a static group membership id (`worker_instance_id`), so
the restarted worker takes its predecessor's place at once; without it, the dead member held its
partitions until its session timed out (`broker_session_timeout`, 60 s: ~60 s to recover). The
ClickHouse sink is a plain aiokafka consumer with its own 10 s session. The long version kills
ingest, deliver and track, then runs a 20,000 burst without faults and counts the rebalances the
broker logs, which should be none (a false one: a live worker's session expiring); then does it
all again with a 10 s session timeout (Faust reads BROKER_SESSION_TIMEOUT from the environment), to
show that so short a session makes no false rebalance under load: it is the setting that bounds
recovery (to ~10 s, measured with dynamic membership) where a worker comes back without its static
id, such as a rescheduled pod.
"""

import time
from typing import Any

import pytest

from tests.chaos.harness import LONG, ChaosStack, elapsed, new_tenant, poll, reason_kind, sized

# Faust settings through its environment (faust.types.settings: env_name), applied to every worker.
CONFIGS: dict[str, dict[str, str | None]] = {"stack": {}, "session_10s": {"BROKER_SESSION_TIMEOUT": "10"}}
STAGES = sized(("deliver",), ("deliver", "ingest", "track"))
# A killed stage must deliver again within this (~4 s measured; the sink's own session is 10 s).
RECOVERY_BOUND_S = 20.0
TRICKLE_RATE = 20.0
RECOVERY_TIMEOUT_S = 180.0
BURST = 20_000  # the long version's fault-free burst, as `make bench` runs it


def through_track(stack: ChaosStack, tenant: str, ids: list[str]) -> bool:
    """Whether any of these notifications has its `sent` event in ClickHouse."""
    rows = stack.query("SELECT count() FROM notification_events WHERE tenant = %(tenant)s AND status = 'sent' "
                       "AND notification_id IN %(ids)s", {"tenant": tenant, "ids": tuple(ids)})
    return rows[0][0] > 0


def measure(stack: ChaosStack, stage: str) -> dict[str, Any]:
    tenant = new_tenant(f"recovery-{stage}")
    broker = stack.broker_log()
    load = stack.load(tenant, int(TRICKLE_RATE * (RECOVERY_TIMEOUT_S + 30)), TRICKLE_RATE)
    try:
        time.sleep(5)  # flowing
        receipts = stack.receipts(from_now=True)
        pid, killed_at = stack.kill(stage)
        started = time.monotonic()
        stack.wait_for_worker(stage, not_pid=pid)
        restarted_s = elapsed(started)

        def recovered() -> bool:
            """Whether a notification produced after the kill made it through."""
            after = [nid for nid, at in load.produced if at > killed_at]
            if not after:
                return False
            return through_track(stack, tenant, after) if stage == "track" else bool(receipts.poll() & set(after))

        recovered_s = elapsed(started) if poll(recovered, RECOVERY_TIMEOUT_S, 0.25) else None
    finally:
        ids = load.stop()
    tally = stack.wait_delivered(ids, timeout=120, what=f"recovery {stage}: ")
    return {"stage": stage, "restarted_s": restarted_s, "recovered_s": recovered_s,
            "rebalance_reasons": sorted({reason_kind(r) for g, r in broker.rebalances()}),
            "notifications": len(ids), "lost": tally.lost, "stored_twice": tally.stored_twice,
            "resends": tally.resends}


def burst_rebalances(stack: ChaosStack) -> dict[str, Any]:
    """A fault-free burst; the rebalances the broker logged meanwhile (there should be none)."""
    tenant = new_tenant("burst")
    broker = stack.broker_log()
    started = time.monotonic()
    ids = stack.load(tenant, BURST, 1_000_000).finish()
    tally = stack.wait_delivered(ids, timeout=600, what="burst: ")
    rebalances = broker.rebalances()
    return {"burst": BURST, "burst_s": elapsed(started), "burst_lost": tally.lost,
            "false_rebalances": len(rebalances), "false_rebalance_reasons": sorted({reason_kind(r) for _, r in rebalances})}


@pytest.mark.parametrize("config", list(CONFIGS) if LONG else ["stack"])
def test_recovery_time_after_a_sigkill(chaos_stack: ChaosStack, config: str) -> None:
    stack = chaos_stack
    stack.ensure_up()
    started = time.monotonic()
    variables = CONFIGS[config]
    if variables:
        stack.restart_workers(variables)
        stack.ensure_up()
    try:
        runs = [measure(stack, stage) for stage in STAGES]
        burst = burst_rebalances(stack) if LONG else {}
    finally:
        if variables:  # back to the stack's own configuration for the scenarios after this one
            stack.restart_workers({name: None for name in variables})
    recovered = [run["recovered_s"] for run in runs]
    stack.report("recovery_time", {
        "config": config, "faust_env": variables, "recovery_s": dict(zip(STAGES, recovered)),
        "restart_s": {run["stage"]: run["restarted_s"] for run in runs}, **burst, "runs": runs,
        "duration_s": elapsed(started),
    }, {
        "recovered": (None not in recovered and max(recovered) <= RECOVERY_BOUND_S,
                      f"recovery over {RECOVERY_BOUND_S:.0f}s: {dict(zip(STAGES, recovered))}"),
        "lost": (all(run["lost"] == 0 for run in runs), f"notifications lost: {[run['lost'] for run in runs]}"),
        "stored_twice": (all(run["stored_twice"] == 0 for run in runs), "stored twice"),
        "burst": (not burst or burst["burst_lost"] == 0, f"the burst lost {burst.get('burst_lost')}"),
        "no_false_rebalance": (not burst or burst["false_rebalances"] == 0,
                               f"rebalances during a fault-free burst: {burst.get('false_rebalance_reasons')}"),
    })
