"""agents/caps.py and route's use of it: frequency caps per user × category × channel, on a clock the
test sets, and the per-user state route writes for them."""

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.caps import Sends, cap_problems, caps_on, first_allowed, record_send, sends_key, verdict
from agents.route import ROUTE, capped, hold
from agents.template import template_problems
from streams.tables import template_key
from streams.topics import DELIVER_BY_NAME, EVENTS, RENDERED, ROUTE_USERS, SCHEDULED, deliver_topic
from tests.unit import records
from tests.unit.test_stages import incoming, runtime

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOURLY = [{"channel": "*", "limit": 3, "period_s": 3600}]


def capped_template(caps: list[dict[str, Any]] = HOURLY, over_cap: str = "suppress", **overrides: Any) -> dict:
    return records.template("promo", category="marketing", frequency_caps=caps, over_cap=over_cap,
                            critical=False, **overrides)


def nid(i: int) -> str:
    return str(uuid.UUID(int=i))


def let_through(template: dict, n: int, every: timedelta, channel: str = "email") -> tuple[Sends, list[Any]]:
    """n notifications `every` apart through `verdict` and `record_send`, as route does; the sends and
    each one's verdict."""
    caps = caps_on(template, channel)
    sends: Sends = []
    verdicts = []
    for i in range(n):
        now = T0 + i * every
        found = verdict(sends, caps, nid(i), "marketing", channel, now, template["over_cap"])
        verdicts.append(found)
        if found.at is not None:
            sends = record_send(sends, caps, nid(i), found.at, now)
    return sends, verdicts


def test_a_cap_of_3_an_hour_suppresses_the_fourth_in_the_hour() -> None:
    _, verdicts = let_through(capped_template(), 4, timedelta(minutes=10))
    assert [v.at for v in verdicts[:3]] == [T0, T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)]
    assert verdicts[3].at is None and verdicts[3].detail == "frequency cap reached: 3 per 3600 s of 'marketing' on email"


def test_after_the_hour_one_goes_again_and_old_sends_are_dropped() -> None:
    sends, verdicts = let_through(capped_template(), 5, timedelta(minutes=20))  # 0, 20, 40, 60, 80 min
    assert [v.at is not None for v in verdicts] == [True, True, True, True, True]
    assert [nid for nid, _ in sends] == [nid(2), nid(3), nid(4)]  # 0 and 20 min are past the hour at 80 min


def test_a_record_handled_twice_counts_once_and_gets_the_same_answer() -> None:
    caps = caps_on(capped_template(), "email")
    sends = record_send([], caps, nid(1), T0, T0)
    assert record_send(sends, caps, nid(1), T0, T0) == sends
    again = verdict(sends + [[nid(2), T0.timestamp()], [nid(3), T0.timestamp()]], caps, nid(1), "marketing", "email",
                    T0 + timedelta(seconds=5), "suppress")
    assert again.at == T0 and again.detail is None  # the cap is full now, but this one was let through


def test_a_cap_on_one_channel_leaves_the_others_and_star_counts_each_apart() -> None:
    sms_only = capped_template([{"channel": "sms", "limit": 1, "period_s": 60}])
    assert caps_on(sms_only, "email") == [] and len(caps_on(sms_only, "sms")) == 1
    assert len(caps_on(capped_template(), "email")) == len(caps_on(capped_template(), "push")) == 1
    assert caps_on(None, "email") == []


def test_every_cap_must_allow_it() -> None:
    template = capped_template([{"channel": "*", "limit": 3, "period_s": 3600},
                                {"channel": "email", "limit": 4, "period_s": 86400}])
    _, verdicts = let_through(template, 6, timedelta(minutes=50))  # 0, 50, 100, 150, 200, 250 min
    assert [v.at is not None for v in verdicts] == [True, True, True, True, False, False]
    assert "4 per 86400 s" in verdicts[4].detail


def test_over_cap_defer_holds_until_the_cap_allows_and_no_hour_ever_holds_more_than_3() -> None:
    template = capped_template(over_cap="defer")
    sends, verdicts = let_through(template, 10, timedelta(minutes=1))
    assert [v.at for v in verdicts[:3]] == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    assert verdicts[3].at == T0 + timedelta(hours=1)  # the first leaves the hour
    assert "until 2026-11-25T13:00:00Z" in verdicts[3].detail
    times = sorted(t for _, t in sends)
    assert len(times) == 10
    for start in times:
        assert sum(start <= t < start + 3600 for t in times) <= 3


def test_first_allowed_with_nothing_in_the_way_is_now() -> None:
    assert first_allowed([], HOURLY, T0.timestamp()) == T0.timestamp()


def test_caps_under_1_are_refused_by_templates_put() -> None:
    bad = capped_template([{"channel": "*", "limit": 0, "period_s": 3600}, {"channel": "sms", "limit": 2, "period_s": 0},
                           {"channel": "email", "limit": 1, "period_s": 1}])
    problems = cap_problems(bad)
    assert len(problems) == 2
    assert "frequency cap 0 (0 per 3600 s on *)" in problems[0] and "frequency cap 1" in problems[1]
    assert template_problems(bad) == problems
    assert template_problems(capped_template()) == []
    assert caps_on(bad, "email") == [{"channel": "email", "limit": 1, "period_s": 1}]  # a producer's: left out


def test_capped_suppresses_and_records_only_what_it_lets_through() -> None:
    template = capped_template([{"channel": "*", "limit": 1, "period_s": 3600}])
    state: dict[str, Sends] = {}
    first = records.notification(notification_id=uuid.UUID(int=1), category="marketing")
    second = records.notification(notification_id=uuid.UUID(int=2), category="marketing")
    assert capped(state, first, None, template, "email", None, T0) is None
    outcome = capped(state, second, None, template, "email", None, T0)
    assert outcome.reason_code == "frequency_cap"
    assert state == {sends_key("marketing", "email"): [[str(uuid.UUID(int=1)), T0.timestamp()]]}


def test_a_deferral_past_the_cap_still_keeps_quiet_hours() -> None:
    template = capped_template([{"channel": "*", "limit": 1, "period_s": 3600}], over_cap="defer")
    state = {sends_key("marketing", "email"): [[nid(9), T0.timestamp()]]}
    preferences = records.preferences(quiet_hours={"start": "12:30", "end": "14:00"})  # UTC
    notification = records.notification(notification_id=uuid.UUID(int=1), category="marketing")
    held = capped(state, notification, preferences, template, "email", hold(notification, preferences, template, T0), T0)
    assert held.status == "deferred" and held.until == T0 + timedelta(hours=2)
    assert "frequency cap reached" in held.detail and "quiet hours 12:30-14:00" in held.detail
    assert state[sends_key("marketing", "email")][-1] == [nid(1), (T0 + timedelta(hours=2)).timestamp()]


async def test_route_stage_suppresses_the_fourth_and_writes_the_users_sends_to_their_partition(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agents.route.now_utc", lambda: T0)
    stage = runtime(ROUTE, tmp_path)
    stage.context.templates.fold(template_key("default", "promo", "en", 1), capped_template(over_cap="suppress"))
    users = stage.context.user_state[ROUTE_USERS.name]
    promo = [records.notification(notification_id=uuid.UUID(int=i), template_id="promo", template_version=1,
                                  category="marketing") for i in range(1, 5)]
    batch = [replace(incoming(n, "Notification", RENDERED.name, i), partition=2) for i, n in enumerate(promo)]
    out = await stage.handle(batch)
    routed = [t["notification_id"].int for t in out.of(DELIVER_BY_NAME[deliver_topic("email")])]
    assert routed == [1, 2, 3]
    [suppressed] = [e for e in out.of(EVENTS) if e["status"] == "suppressed"]
    assert (suppressed["notification_id"].int, suppressed["error_code"]) == (4, "frequency_cap")
    [write] = out.user_state_records()
    assert (write.topic, write.key, write.partition) == (ROUTE_USERS, b"acme/user-1", 2)
    for w in out.user_state_records():
        users.apply(w.partition, w.key, w.value)
    # The same batch again (a replay after a crash): the same three go, and nothing is counted twice.
    again = await stage.handle(batch)
    assert [t["notification_id"].int for t in again.of(DELIVER_BY_NAME[deliver_topic("email")])] == [1, 2, 3]
    assert len(users.get("acme/user-1")[sends_key("marketing", "email")]) == 3
    assert again.user_state_records() == []


async def test_route_stage_defers_over_the_cap_to_herald_scheduled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agents.route.now_utc", lambda: T0)
    stage = runtime(ROUTE, tmp_path)
    stage.context.templates.fold(template_key("default", "promo", "en", 1), capped_template(
        [{"channel": "*", "limit": 1, "period_s": 60}], over_cap="defer"))
    promo = [records.notification(notification_id=uuid.UUID(int=i), template_id="promo", template_version=1,
                                  category="marketing") for i in range(1, 3)]
    out = await stage.handle([incoming(n, "Notification", RENDERED.name, i) for i, n in enumerate(promo)])
    [deferred] = out.of(SCHEDULED)
    assert deferred["notification_id"].int == 2 and deferred["due_at"] == T0 + timedelta(seconds=60)
    assert [e["status"] for e in out.of(EVENTS)] == ["routed", "deferred"]
