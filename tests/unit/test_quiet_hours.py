"""agents/quiet_hours.py and route's `hold`: quiet hours in the recipient's zone, on a clock the test sets."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from agents.quiet_hours import parse_hhmm, parse_window, quiet_deferral, window_end, zone
from agents.route import hold
from tests.unit import records

TOKYO = ZoneInfo("Asia/Tokyo")
NIGHT = {"start": "22:00", "end": "07:00"}


def tokyo(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO)  # type: ignore[misc]


def in_tokyo(quiet: dict | None = NIGHT, **overrides: object) -> dict:
    return records.preferences(**({"time_zone": "Asia/Tokyo", "quiet_hours": quiet} | overrides))


@pytest.mark.parametrize("now, until", [
    (tokyo(2026, 11, 25, 23, 30), tokyo(2026, 11, 26, 7, 0)),  # before midnight: the next morning
    (tokyo(2026, 11, 26, 3, 15), tokyo(2026, 11, 26, 7, 0)),  # after midnight: this morning
    (tokyo(2026, 11, 25, 22, 0), tokyo(2026, 11, 26, 7, 0)),  # the start is inside
    (tokyo(2026, 11, 26, 6, 59, 59), tokyo(2026, 11, 26, 7, 0)),
])
def test_inside_22_to_07_in_tokyo_is_deferred_to_07_00_local(now: datetime, until: datetime) -> None:
    deferral = quiet_deferral(records.notification(), in_tokyo(), None, now.astimezone(UTC))
    assert deferral is not None
    assert deferral.until == until and deferral.until.tzinfo is UTC
    assert deferral.until.astimezone(TOKYO).strftime("%H:%M") == "07:00"
    assert "22:00-07:00 Asia/Tokyo" in deferral.reason and "2026-11-26T07:00:00+09:00" in deferral.reason


@pytest.mark.parametrize("now", [tokyo(2026, 11, 26, 7, 0), tokyo(2026, 11, 26, 12, 0), tokyo(2026, 11, 25, 21, 59)])
def test_outside_the_window_goes_now(now: datetime) -> None:
    assert quiet_deferral(records.notification(), in_tokyo(), None, now.astimezone(UTC)) is None


def test_high_priority_and_critical_templates_are_never_held() -> None:
    now = tokyo(2026, 11, 25, 23, 30).astimezone(UTC)
    assert quiet_deferral(records.notification(priority="high"), in_tokyo(), None, now) is None
    assert quiet_deferral(records.notification(), in_tokyo(), records.template(critical=True), now) is None
    assert quiet_deferral(records.notification(), in_tokyo(), records.template(critical=False), now) is not None


def test_no_quiet_hours_no_preferences_or_an_empty_window_hold_nothing() -> None:
    now = tokyo(2026, 11, 25, 23, 30).astimezone(UTC)
    assert quiet_deferral(records.notification(), in_tokyo(None), None, now) is None
    assert quiet_deferral(records.notification(), None, None, now) is None
    assert quiet_deferral(records.notification(), in_tokyo({"start": "22:00", "end": "22:00"}), None, now) is None


def test_the_request_zone_wins_over_the_preference_and_utc_is_the_default() -> None:
    now = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)  # 23:00 UTC, 08:00 in Tokyo
    in_utc = records.notification(recipient=records.recipient(time_zone="UTC"))
    assert quiet_deferral(in_utc, in_tokyo(), None, now) is not None
    assert quiet_deferral(records.notification(), in_tokyo(), None, now) is None  # Tokyo: outside
    no_zone = records.preferences(quiet_hours=NIGHT)
    assert quiet_deferral(records.notification(), no_zone, None, now).until == datetime(2026, 11, 26, 7, tzinfo=UTC)


def test_an_unknown_zone_reads_the_window_in_utc_and_a_bad_time_is_ignored() -> None:
    now = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
    assert quiet_deferral(records.notification(), in_tokyo(time_zone="Mars/Olympus"), None, now) is not None
    assert quiet_deferral(records.notification(), in_tokyo({"start": "late", "end": "07:00"}), None, now) is None


def test_a_daytime_window_and_a_dst_change_overnight() -> None:
    paris = ZoneInfo("Europe/Paris")
    lunch = (parse_hhmm("12:00"), parse_hhmm("13:30"))
    assert window_end(*lunch, datetime(2026, 6, 1, 12, 10, tzinfo=paris), paris) == datetime(2026, 6, 1, 11, 30, tzinfo=UTC)
    assert window_end(*lunch, datetime(2026, 6, 1, 13, 30, tzinfo=paris), paris) is None
    new_york = ZoneInfo("America/New_York")  # clocks go forward at 02:00 on 2026-03-08
    night = (parse_hhmm("22:00"), parse_hhmm("07:00"))
    assert window_end(*night, datetime(2026, 3, 8, 1, 0, tzinfo=new_york), new_york) == datetime(2026, 3, 8, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["7:00", "07:0", "0700", "ab:cd", "24:00", "07:60"])
def test_parse_hhmm_refuses_what_is_not_hh_mm(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hhmm(text)


def test_parse_window() -> None:
    assert parse_window("22:00-07:00") == ("22:00", "07:00")
    for bad in ("22:00", "22:00-22:00", "22:00-7"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_route_defers_inside_quiet_hours_and_sends_high_priority_now() -> None:
    now = tokyo(2026, 11, 25, 23, 30).astimezone(UTC)
    held = hold(records.notification(), in_tokyo(), None, now)
    assert held is not None and held.status == "deferred" and held.until == tokyo(2026, 11, 26, 7, 0)
    assert hold(records.notification(priority="high"), in_tokyo(), None, now) is None


def test_route_judges_quiet_hours_at_the_send_at() -> None:
    now = tokyo(2026, 11, 25, 12, 0).astimezone(UTC)
    at_night = records.notification(send_at=now + timedelta(hours=11))  # 23:00 in Tokyo
    held = hold(at_night, in_tokyo(), None, now)
    assert held is not None and held.status == "deferred" and held.until == tokyo(2026, 11, 26, 7, 0)
    afternoon = records.notification(send_at=now + timedelta(hours=2))
    held = hold(afternoon, in_tokyo(), None, now)
    assert held is not None and held.status == "scheduled" and held.until == now + timedelta(hours=2)


def prefs_set(monkeypatch: pytest.MonkeyPatch, *options: str) -> tuple[int, str, list]:
    from tooling import cli as cli_module, producer

    published: list = []
    monkeypatch.setattr(producer, "publish", lambda spec, recs: published.extend(recs))
    result = CliRunner().invoke(cli_module.app, ["prefs", "set", "kenji", "--email", "kenji@example.com", *options])
    return result.exit_code, " ".join(result.output.split()), published


def test_cli_prefs_set_takes_quiet_hours_and_a_checked_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, published = prefs_set(monkeypatch, "--quiet-hours", "22:00-07:00", "--time-zone", "Asia/Tokyo")
    assert code == 0
    [(key, preferences)] = published
    assert key == b"kenji" and preferences.time_zone == "Asia/Tokyo"
    assert (preferences.quiet_hours.start, preferences.quiet_hours.end) == ("22:00", "07:00")
    code, output, published = prefs_set(monkeypatch, "--time-zone", "Asia/Tokio")
    assert code == 1 and "time_zone: 'Asia/Tokio' is no IANA time zone" in output and published == []
    code, output, published = prefs_set(monkeypatch, "--quiet-hours", "10pm-7am")
    assert code == 2 and "--quiet-hours" in output and published == []


def test_a_name_that_is_no_zone_is_read_as_utc() -> None:
    # 'America' is a directory of the tz database: zoneinfo raises IsADirectoryError, not ZoneInfoNotFoundError.
    assert [zone(name) for name in ("America", "Asia/Tokio", "../etc", None)] == [UTC] * 4
    assert zone("Asia/Tokyo").key == "Asia/Tokyo"
