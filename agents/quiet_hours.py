"""Quiet hours: a daily window in the recipient's time zone when non-urgent notifications wait.

The window is the user's preference (`quiet_hours`, start and end as HH:MM, end before start for
an overnight window) in their time zone (the request's `recipient.time_zone`, else the preference's
`time_zone`, else UTC; IANA names read with zoneinfo). A notification due inside it is deferred to
the window's end; priority `high` and templates marked `critical` are never held. Pure functions
over an explicit `at`, so tests choose the clock.
"""

import logging
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)


class Deferral(NamedTuple):
    until: datetime  # UTC
    reason: str  # for the `deferred` lifecycle event's detail


# What zoneinfo raises for a name that is no zone: unknown, malformed, or a directory of the tz
# database ('America' is IsADirectoryError, an OSError).
BAD_ZONE = (ZoneInfoNotFoundError, ValueError, OSError)


def parse_hhmm(text: str) -> time:
    """'22:00' → time(22, 0); ValueError for anything else."""
    hours, sep, minutes = text.partition(":")
    if not (sep and len(hours) == 2 and len(minutes) == 2 and hours.isdigit() and minutes.isdigit()):
        raise ValueError(f"{text!r} is not HH:MM")
    return time(int(hours), int(minutes))


def parse_window(text: str) -> tuple[str, str]:
    """'22:00-07:00' → ('22:00', '07:00'), each checked; for the CLI."""
    start, sep, end = text.partition("-")
    if not sep or parse_hhmm(start) == parse_hhmm(end):
        raise ValueError(f"{text!r} is not HH:MM-HH:MM with two different times")
    return start, end


def zone(name: str | None) -> tzinfo:
    """The IANA zone by name; UTC for none, or (logged) for a name zoneinfo does not know."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except BAD_ZONE:
        log.warning("unknown time zone %r: quiet hours read in UTC", name)
        return UTC


def window_end(start: time, end: time, at: datetime, where: tzinfo) -> datetime | None:
    """The end (UTC) of the window [start, end) that `at` falls in, in zone `where`; None outside it."""
    local = at.astimezone(where)
    now = local.time().replace(tzinfo=None)
    if start < end:
        inside = start <= now < end
    else:  # overnight: 22:00-07:00
        inside = now >= start or now < end
    if not inside:
        return None
    day = local.date() if now < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=where).astimezone(UTC)


def quiet_deferral(notification: dict[str, Any], preferences: dict[str, Any] | None,
                   template: dict[str, Any] | None, at: datetime) -> Deferral | None:
    """Whether the user's quiet hours hold a notification due at `at`, and until when."""
    quiet = (preferences or {}).get("quiet_hours")
    if quiet is None or notification["priority"] == "high" or (template or {}).get("critical"):
        return None
    try:
        start, end = parse_hhmm(quiet["start"]), parse_hhmm(quiet["end"])
    except ValueError as exc:
        log.warning("user %s: quiet hours ignored: %s", notification["recipient"]["user_id"], exc)
        return None
    if start == end:
        return None
    zone_name = notification["recipient"]["time_zone"] or (preferences or {}).get("time_zone")
    where = zone(zone_name)
    until = window_end(start, end, at, where)
    if until is None:
        return None
    local = until.astimezone(where)
    return Deferral(until, f"quiet hours {quiet['start']}-{quiet['end']} {zone_name or 'UTC'}: "
                           f"until {local.isoformat()} ({until:%Y-%m-%dT%H:%M:%SZ})")
