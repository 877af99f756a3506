"""Scenario 4: the SMTP provider fails half the transactions with 4xx and stalls on a tenth.

The mailbox is restarted with fault injection (settings mailbox_fail_rate 0.5, mailbox_timeout_rate
0.1: a failed transaction gets a 4xx on MAIL, RCPT or DATA; a stalled one waits 5 s past the
client's smtp_timeout_s, so the client really times out). Neither stores the message. Deliver
retries each transient failure on its retry tiers (5 s, 30 s, 300 s, 300 s: constants in
streams/topics.py, not shortened here) and dead-letters a notification after
delivery_max_attempts (5) attempts.

Every notification must end delivered once or dead-lettered with a reason (a `dead_lettered` event
and a dead_letters row, retries_exhausted) — never both, never stored twice. Five attempts take
~11 minutes, so the long version waits for that (at most 16 minutes); the short one waits until
each notification was tried at least twice and asserts what holds by then: delivered once,
dead-lettered, or a retry still scheduled. The figures give each bucket.
"""

import time
from collections import Counter
from typing import Any

from tests.chaos.harness import LONG, ChaosStack, elapsed, new_tenant, sized

FAIL_RATE = 0.5
TIMEOUT_RATE = 0.1
N = sized(200, 600)
# Short: wait until every notification is settled or its attempt 0 and 1 have failed (its next one
# is 30 s or more away); long: until every one is delivered or dead-lettered.
TRIED = 2
WAIT_S = sized(240.0, 960.0)


def buckets(stack: ChaosStack, tenant: str, ids: list[str]) -> dict[str, Any]:
    rows = stack.query(
        "SELECT toString(notification_id), groupUniqArray(status), countIf(status = 'retried'), "
        "maxIf(attempt, status = 'retried') FROM notification_events FINAL WHERE tenant = %(tenant)s "
        "GROUP BY notification_id", {"tenant": tenant})
    events = {nid: (set(found), retried, last) for nid, found, retried, last in rows}
    letters = {nid: (reason, detail) for nid, reason, detail in stack.query(
        "SELECT notification_id, reason_code, any(detail) FROM dead_letters FINAL WHERE stage = 'deliver' "
        "AND notification_id IN %(ids)s GROUP BY notification_id, reason_code", {"ids": tuple(ids)})}
    stored, repeats = stack.mail(ids).tally()
    delivered = set(stored)
    dead = {nid for nid in ids if "dead_lettered" in events.get(nid, (set(), 0, 0))[0]}
    in_flight = {nid for nid in ids if nid not in delivered and nid not in dead
                 and "retried" in events.get(nid, (set(), 0, 0))[0]
                 and not {"failed", "sent"} & events[nid][0]}
    return {
        "delivered": delivered, "dead": dead, "in_flight": in_flight,
        "tried": {nid: events[nid][1] for nid in in_flight},  # attempts made (and failed) so far
        "unaccounted": set(ids) - delivered - dead - in_flight,
        "stored_twice": sum(1 for count in stored.values() if count > 1), "resends": sum(repeats.values()),
        "letters": letters, "events": events,
    }


def settled(found: dict[str, Any]) -> bool:
    if found["unaccounted"]:
        return False
    return not found["in_flight"] if LONG else min(found["tried"].values(), default=TRIED) >= TRIED


def test_flaky_smtp_provider_every_notification_delivered_once_or_dead_lettered(chaos_stack: ChaosStack) -> None:
    stack = chaos_stack
    stack.ensure_up()
    tenant = new_tenant("smtp")
    started = time.monotonic()
    with stack.mailbox_faults(FAIL_RATE, TIMEOUT_RATE):
        faults_before = stack.injected_faults()
        ids = stack.load(tenant, N, 1_000_000).finish()
        deadline = time.monotonic() + WAIT_S
        said = 0.0
        while True:
            found = buckets(stack, tenant, ids)
            if settled(found) or time.monotonic() > deadline:
                break
            if time.monotonic() - said > 30:
                said = time.monotonic()
                stack.say(f"smtp faults: {len(found['delivered'])} delivered, {len(found['dead'])} dead-lettered, "
                          f"{len(found['in_flight'])} in flight, {len(found['unaccounted'])} not tried yet")
            time.sleep(2)
        waited_s = elapsed(started)
        injected = stack.injected_faults() - faults_before
    codes = Counter()
    timeouts = 0
    for code, detail, count in stack.query(
            "SELECT error_code, detail, count() FROM notification_events FINAL WHERE tenant = %(tenant)s "
            "AND status = 'retried' GROUP BY error_code, detail", {"tenant": tenant}):
        codes[code] += count
        timeouts += count if "imeout" in detail or "timed out" in detail else 0
    both = found["delivered"] & found["dead"]
    unexplained = [nid for nid in found["dead"] if found["letters"].get(nid, ("", ""))[0] != "retries_exhausted"]
    permanent = [nid for nid, (statuses, _, _) in found["events"].items()
                 if "failed" in statuses and "dead_lettered" not in statuses]
    attempts = Counter(found["tried"].values())

    stack.report("smtp_faults", {
        "notifications": N, "fail_rate": FAIL_RATE, "timeout_rate": TIMEOUT_RATE,
        "smtp_timeout_s": stack.settings.smtp_timeout_s, "delivered": len(found["delivered"]),
        "dead_lettered": len(found["dead"]), "retry_in_flight": len(found["in_flight"]),
        "in_flight_by_attempts_made": dict(sorted(attempts.items())), "unaccounted": len(found["unaccounted"]),
        "stored_twice": found["stored_twice"], "resends": found["resends"], "delivered_and_dead_lettered": len(both),
        "dead_letter_rows": len(found["letters"]), "injected": dict(injected), "retried_codes": dict(codes),
        "client_timeouts": timeouts, "waited_s": waited_s, "duration_s": elapsed(started),
    }, {
        "accounted": (not found["unaccounted"], f"{len(found['unaccounted'])} neither delivered, dead-lettered "
                                                f"nor awaiting a retry, e.g. {sorted(found['unaccounted'])[:3]}"),
        "stored_twice": (found["stored_twice"] == 0, f"{found['stored_twice']} stored twice"),
        "not_both": (not both, f"{len(both)} both delivered and dead-lettered"),
        "dead_letter_reason": (not unexplained, f"{len(unexplained)} dead-lettered without a retries_exhausted "
                                                f"dead letter, e.g. {unexplained[:3]}"),
        "no_permanent_failure": (not permanent, f"{len(permanent)} failed for good on transient faults"),
        "settled": (not LONG or not found["in_flight"], f"{len(found['in_flight'])} still awaiting a retry "
                                                        f"after {WAIT_S:.0f}s"),
        "faults_injected": (injected["fail/MAIL"] + injected["fail/RCPT"] + injected["fail/DATA"] > 0, "no 4xx injected"),
        "timeouts_real": (timeouts > 0 or not sum(v for k, v in injected.items() if k.startswith("timeout")),
                          "stalls were injected but the client never timed out"),
    })
