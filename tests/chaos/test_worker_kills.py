"""Scenario 1: a random stage's worker SIGKILLed K times while N notifications flow.

The supervisor (`herald worker --stage all`) starts each killed worker again; its consumer group
re-reads what was not committed. Nothing may be lost, and nothing stored twice by the mailbox.
Resends the mailbox recognised by Message-ID (a send whose SMTP reply came just before a deliver
kill) are counted; there can be no more than deliver_concurrency per kill.
"""

import time

from tests.chaos.harness import ChaosStack, elapsed, new_tenant, sized

N = sized(3_000, 20_000)
KILLS = sized(3, 10)
RATE = 100.0  # requests/s: the run lasts N / RATE seconds, and the kills are spread over it


def test_random_stage_workers_killed_lose_nothing_and_store_nothing_twice(chaos_stack: ChaosStack) -> None:
    stack = chaos_stack
    stack.ensure_up()
    from agents.registry import STAGES

    tenant = new_tenant("kills")
    supervisor = stack.supervisor_log()
    started = time.monotonic()
    load = stack.load(tenant, N, RATE)
    every = N / RATE / (KILLS + 1)
    kills = []
    for k in range(KILLS):
        time.sleep(max(0.0, started + (k + 1) * every - time.monotonic()))
        stage = stack.rng.choice(list(STAGES))
        pid, _ = stack.kill(stage)
        kills.append({"stage": stage, "at_s": elapsed(started), "pid": pid})
        stack.say(f"kill {k + 1}/{KILLS}: {stage} (pid {pid}) at {elapsed(started)}s")
    ids = load.finish()
    produced_s = elapsed(started)
    tally = stack.wait_delivered(ids, timeout=sized(300, 900), what="kills: ")
    delivered_s = elapsed(started)
    timelines = stack.timeline_gaps(tenant, ids, timeout=60)

    bound = stack.settings.deliver_concurrency * KILLS
    stack.report("worker_kills", {
        "notifications": N, "kills": len(kills), "killed": [k["stage"] for k in kills],
        "delivered": tally.delivered, "lost": tally.lost, "stored_twice": tally.stored_twice,
        "resends": tally.resends, "resend_bound": bound,
        "produced_s": produced_s, "all_delivered_s": delivered_s, **timelines,
        "kill_times_s": [k["at_s"] for k in kills], "restarts": len(supervisor.exits()),
        "crashed": supervisor.crashes(), "duration_s": elapsed(started),
    }, {
        "lost": (tally.lost == 0, f"{tally.lost} of {N} never reached the mailbox"),
        "stored_twice": (tally.stored_twice == 0, f"{tally.stored_twice} stored twice"),
        "resends": (tally.resends <= bound, f"{tally.resends} resends for at most {bound} in flight"),
        "timelines": (timelines["events_missing"] == 0, f"lifecycle events missing: {timelines}"),
    })
