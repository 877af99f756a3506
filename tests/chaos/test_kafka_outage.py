"""Scenario 2: the Kafka broker stopped for 30 s (short: 15 s) mid-run, then started again.

Half the notifications are produced before the stop (so a backlog is in flight in every stage when
the broker goes), half after the start. All the while, the gateway gets a request every 200 ms, each
on its own connection and waited for as long as it takes. Afterwards nothing may be lost or stored
twice, and every request the gateway answered 202 must have been delivered: a 202 is a promise that
Kafka has the request.

Two tests read the one run: the delivery guarantees, and that the gateway says 503 while the broker
is down, rather than holding every request until the broker is back.
"""

import time
from typing import Any

import pytest

from tests.chaos.harness import ChaosStack, GatewayPoster, check, elapsed, new_tenant, sized

OUTAGE_S = sized(15.0, 30.0)
N = sized(2_000, 10_000)
RATE = 200.0
GATEWAY_RATE = 5.0


@pytest.fixture(scope="module")
def outage(chaos_stack: ChaosStack) -> dict[str, tuple[bool, str]]:
    stack = chaos_stack
    stack.ensure_up()
    tenant = new_tenant("kafka")
    supervisor = stack.supervisor_log()
    started = time.monotonic()
    before = stack.load(tenant, N // 2, RATE, prefix="before")
    poster = GatewayPoster(stack.settings, tenant, GATEWAY_RATE)
    poster.start()
    try:
        before_ids = before.finish()
        time.sleep(1)
        stop_s = stack.script("kafka", "stop")
        down_at = time.time()
        stack.say(f"Kafka stopped ({stop_s:.1f}s to stop); down for {OUTAGE_S:.0f}s")
        time.sleep(OUTAGE_S)
        up_at = time.time()  # from here on the broker may take requests again
        start_s = stack.script("kafka", "start")
        ready_at = time.time()
        stack.say(f"Kafka started again ({start_s:.1f}s to be ready)")
        after_ids = stack.load(tenant, N - N // 2, RATE, prefix="after").finish()
        time.sleep(5)
    finally:
        posted = poster.finish()
    accepted = [p for p in posted if p.status == 202]
    ids = before_ids + after_ids + [p.notification_id for p in accepted if p.notification_id]
    tally = stack.wait_delivered(ids, timeout=sized(300, 600), what="kafka outage: ")
    # Every request sent while the broker was down, and how the gateway answered it.
    during = [p for p in posted if down_at <= p.sent_at < up_at]
    answers: dict[str, Any] = {}
    for p in during:
        answers[str(p.status or p.error)] = answers.get(str(p.status or p.error), 0) + 1
    answered_while_down = [p for p in during if p.answered_at < up_at]
    refused = [p for p in posted if p.status == 503]
    undelivered_202 = len({p.notification_id for p in accepted} - set(stack.mail(ids).submissions()))
    other = [p for p in posted if p.status not in (202, 503)]
    latency = [round(p.answered_at - p.sent_at, 1) for p in during]
    # Refused although the broker had been ready for longer than the gateway waits for it.
    late = [p for p in posted if p.status == 503 and p.sent_at > ready_at + stack.settings.gateway_produce_timeout_s]
    crashed = supervisor.crashes()

    return stack.report("kafka_outage", {
        "notifications": len(ids), "outage_s": OUTAGE_S, "stop_s": round(stop_s, 1), "start_s": round(start_s, 1),
        "delivered": tally.delivered, "lost": tally.lost, "stored_twice": tally.stored_twice,
        "resends": tally.resends, "gateway_posted": len(posted), "gateway_202": len(accepted),
        "gateway_503": len(refused), "gateway_other": len(other), "gateway_202_undelivered": undelivered_202,
        "posted_while_down": len(during), "answers_while_down": answers,
        "answered_before_broker_back": len(answered_while_down),
        "answer_s_while_down": {"min": min(latency, default=None), "max": max(latency, default=None)},
        "gateway_503_after_recovery": len(late),
        "workers_crashed": crashed, "duration_s": elapsed(started),
    }, {
        "lost": (tally.lost == 0, f"{tally.lost} of {len(ids)} never reached the mailbox"),
        "stored_twice": (tally.stored_twice == 0, f"{tally.stored_twice} stored twice"),
        "202_delivered": (undelivered_202 == 0, f"{undelivered_202} requests answered 202 were never delivered"),
        "no_other_answer": (not other, f"answers other than 202/503: {[(p.status, p.error) for p in other][:5]}"),
        "gateway_recovered": (not late, f"{len(late)} requests refused 503 more than "
                                        f"{stack.settings.gateway_produce_timeout_s:.0f}s after the broker was back"),
        "503_while_down": (bool(answered_while_down) and all(p.status == 503 for p in answered_while_down),
                           f"of {len(during)} requests sent while the broker was down, {len(answered_while_down)} "
                           f"were answered before it was back ({answers} in all, after "
                           f"{latency[:3]}…{latency[-3:]} s)"),
    }, verify=False)


def test_kafka_down_mid_run_loses_nothing_and_every_202_is_delivered(outage: dict[str, tuple[bool, str]]) -> None:
    check(outage, ["lost", "stored_twice", "202_delivered", "no_other_answer", "gateway_recovered"])


def test_the_gateway_answers_503_while_kafka_is_down(outage: dict[str, tuple[bool, str]]) -> None:
    check(outage, ["503_while_down"])
