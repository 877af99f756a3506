"""Frequency caps: at most `limit` notifications of a category per user and channel in any `period_s`.

A template declares its caps (`frequency_caps`, a cap's channel '*' meaning each channel apart) and
what happens over one (`over_cap`: `suppress`, or `defer` until the caps allow it). Route keeps, per
user, the sends it let through for each category and channel: the notification id and the time it
goes (now, or its due time when it waits), so a record handled twice (at-least-once) finds its own id
and is not counted twice. Pure functions over a user's sends and an explicit time, so tests choose
the clock.

The rules, kept simple:
- What counts is what route let through (routed now or held to go later, at the time it will go),
  for templates that declare a cap on the channel; a suppressed notification does not count, and
  neither does one of a template without caps (which is not held either). Templates of one category
  should declare the same caps.
- A notification may go at `t` when for each cap fewer than `limit` sends lie within `period_s`
  of `t` on either side: with sends that wait ahead (deferred ones), that keeps every window of
  `period_s` at or under the limit.
- A user's sends of a category and channel are kept for the longest period of the caps that count
  them, and dropped after it.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

# A user's state: "<category>|<channel>" → [[notification id, epoch seconds it goes], ...], oldest first.
Sends = list[list[Any]]


class Verdict(NamedTuple):
    at: datetime | None  # when it may go; None: suppressed
    detail: str | None  # why it was held or suppressed; None when it goes as asked


def valid(cap: Mapping[str, Any]) -> bool:
    return cap["limit"] >= 1 and cap["period_s"] >= 1


def cap_problems(template: Mapping[str, Any]) -> list[str]:
    """Why a template's caps must not be published (`herald templates put`)."""
    name = f"template '{template['template_id']}' v{template['version']}"
    return [f"{name}: frequency cap {i} ({cap['limit']} per {cap['period_s']} s on {cap['channel']}): "
            f"limit and period_s must be at least 1"
            for i, cap in enumerate(template.get("frequency_caps") or ()) if not valid(cap)]


def caps_on(template: dict[str, Any] | None, channel: str) -> list[dict[str, Any]]:
    """The template's caps that count the channel. A cap under 1 (published past `herald templates
    put`, by another producer) is left out: it would hold nothing or everything forever."""
    return [cap for cap in (template or {}).get("frequency_caps") or ()
            if cap["channel"] in ("*", channel) and valid(cap)]


def sends_key(category: str, channel: str) -> str:
    return f"{category}|{channel}"


def near(sends: Sends, at: float, period_s: float) -> list[float]:
    """The send times within `period_s` of `at`, either side, in order."""
    return sorted(t for _, t in sends if at - period_s < t < at + period_s)


def blocking(sends: Sends, caps: list[dict[str, Any]], at: float) -> list[tuple[dict[str, Any], list[float]]]:
    """The caps `at` would break, with the sends that fill each."""
    found = []
    for cap in caps:
        times = near(sends, at, cap["period_s"])
        if len(times) >= cap["limit"]:
            found.append((cap, times))
    return found


def first_allowed(sends: Sends, caps: list[dict[str, Any]], at: float) -> float:
    """The earliest time from `at` on that every cap allows. Each step moves past the time a send
    in the way leaves its window, which no send does twice, so it ends."""
    full = blocking(sends, caps, at)
    while full:
        at = max(times[len(times) - cap["limit"]] + cap["period_s"] for cap, times in full)
        full = blocking(sends, caps, at)
    return at


def describe(cap: dict[str, Any], category: str, channel: str) -> str:
    return f"{cap['limit']} per {cap['period_s']} s of '{category}' on {channel}"


def verdict(sends: Sends, caps: list[dict[str, Any]], notification_id: str, category: str, channel: str,
            at: datetime, over_cap: str) -> Verdict:
    """Whether a notification due at `at` may go on the channel under the caps, and when."""
    mine = next((t for nid, t in sends if nid == notification_id), None)
    if mine is not None:  # let through before (this is the replay): the same answer
        went = datetime.fromtimestamp(mine, UTC)
        return Verdict(went, None) if went <= at else Verdict(went, "frequency cap: held before, until "
                                                                     f"{went:%Y-%m-%dT%H:%M:%SZ}")
    full = blocking(sends, caps, at.timestamp())
    if not full:
        return Verdict(at, None)
    reached = describe(full[0][0], category, channel)
    if over_cap != "defer":
        return Verdict(None, f"frequency cap reached: {reached}")
    until = datetime.fromtimestamp(first_allowed(sends, caps, at.timestamp()), UTC)
    return Verdict(until, f"frequency cap reached ({reached}): until {until:%Y-%m-%dT%H:%M:%SZ}")


def record_send(sends: Sends, caps: list[dict[str, Any]], notification_id: str, at: datetime, now: datetime) -> Sends:
    """The sends with this one (once), less those older than the caps' longest period."""
    oldest = now.timestamp() - max(cap["period_s"] for cap in caps)
    kept = [send for send in sends if send[1] > oldest]
    if not any(nid == notification_id for nid, _ in kept):
        kept.append([notification_id, round(at.timestamp(), 3)])
    return kept
