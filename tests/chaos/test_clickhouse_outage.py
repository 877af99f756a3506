"""Scenario 3: ClickHouse stopped for 5 minutes (short: 30 s) mid-run, then started again.

Notifications flow before, during and after the outage. Delivery does not need ClickHouse, so it
goes on; the sink (track) pauses, keeps its group membership and retries its insert with backoff.
Afterwards each notification's timeline in ClickHouse must be whole: exactly what the run implies,
one accepted, rendered, routed and sent event each (validate emits none for a valid notification).
"""

import time

from tests.chaos.harness import ChaosStack, elapsed, new_tenant, sized

OUTAGE_S = sized(30.0, 300.0)
BEFORE_S = 5.0
RATE = sized(40.0, 20.0)
N = int(RATE * (BEFORE_S + OUTAGE_S + 10))


def test_clickhouse_down_mid_run_misses_no_lifecycle_event(chaos_stack: ChaosStack) -> None:
    stack = chaos_stack
    stack.ensure_up()
    tenant = new_tenant("clickhouse")
    started = time.monotonic()
    load = stack.load(tenant, N, RATE)
    try:
        time.sleep(BEFORE_S)
        stop_s = stack.script("clickhouse", "stop")
        down_at = time.time()
        stack.say(f"ClickHouse stopped ({stop_s:.1f}s to stop); down for {OUTAGE_S:.0f}s")
        time.sleep(OUTAGE_S)
        during = stack.mail(load.ids).submissions()
        up_at = time.time()
        start_s = stack.script("clickhouse", "start")
        stack.say(f"ClickHouse started again ({start_s:.1f}s to be ready)")
    except BaseException:
        load.stop()
        raise
    ids = load.finish()
    produced_during = sum(1 for _, at in load.produced if down_at <= at < up_at)
    tally = stack.wait_delivered(ids, timeout=300, what="clickhouse outage: ")
    timelines = stack.timeline_gaps(tenant, ids, timeout=sized(180, 300))
    complete_s = round(time.time() - up_at, 1)

    stack.report("clickhouse_outage", {
        "notifications": len(ids), "outage_s": OUTAGE_S, "stop_s": round(stop_s, 1), "start_s": round(start_s, 1),
        "produced_while_down": produced_during, "delivered_while_down": len(during),
        "delivered": tally.delivered, "lost": tally.lost, "stored_twice": tally.stored_twice, **timelines,
        "events_complete_s_after_restart": complete_s, "duration_s": elapsed(started),
    }, {
        "delivered_while_down": (len(during) > 0, "nothing was delivered while ClickHouse was down"),
        "lost": (tally.lost == 0, f"{tally.lost} of {len(ids)} never reached the mailbox"),
        "stored_twice": (tally.stored_twice == 0, f"{tally.stored_twice} stored twice"),
        "events_missing": (timelines["events_missing"] == 0, f"lifecycle events missing in ClickHouse: {timelines}"),
        "events_extra": (timelines["events_extra"] == 0, f"lifecycle events counted twice: {timelines}"),
    })
