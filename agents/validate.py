"""validate: herald.accepted → herald.validated, or herald.rejected with a reason code.

Checks the recipient, that the template exists, that every variable it declares is supplied, sizes,
that Herald has the channels asked for, and each chosen channel's addresses (the channel's own check,
agents/channels). It also settles the notification's channels: the ones
asked for, or every channel the template has a part for.
"""

from datetime import timedelta
from typing import Any, NamedTuple

from agents.channels import CHANNELS
from streams.stage import Context, Incoming, Outputs, StageSpec, now_utc
from streams.topics import ACCEPTED, EVENTS, REJECTED, VALIDATED

MAX_VARIABLES = 200
MAX_VARIABLE_BYTES = 16 * 1024
MAX_TOTAL_BYTES = 128 * 1024
# How far ahead send_at may be: a scheduled notification waits on herald.scheduled until then.
MAX_SCHEDULE = timedelta(days=30)


class Problem(NamedTuple):
    reason_code: str
    detail: str


def size_problem(notification: dict[str, Any]) -> Problem | None:
    variables = notification["variables"]
    if len(variables) > MAX_VARIABLES:
        return Problem("too_large", f"{len(variables)} variables; at most {MAX_VARIABLES}")
    total = 0
    for name, value in variables.items():
        size = len(value.encode())
        if size > MAX_VARIABLE_BYTES:
            return Problem("too_large", f"variable '{name}' is {size} bytes; at most {MAX_VARIABLE_BYTES}")
        total += size
    if total > MAX_TOTAL_BYTES:
        return Problem("too_large", f"variables total {total} bytes; at most {MAX_TOTAL_BYTES}")
    return None


def check(notification: dict[str, Any], template: dict[str, Any] | None,
          preferences: dict[str, Any] | None) -> Problem | list[str]:
    """The notification's channels when it is valid, else the first problem found."""
    if not notification["recipient"]["user_id"].strip():
        return Problem("missing_recipient", "recipient.user_id is empty")
    if template is None:
        version = notification["template_version"]
        which = f"'{notification['template_id']}'" + (f" version {version}" if version is not None else "")
        return Problem("unknown_template", f"no template {which}")
    missing = [name for name in template["variables"] if name not in notification["variables"]]
    if missing:
        return Problem("missing_variable", f"template '{template['template_id']}' needs: {', '.join(missing)}")
    problem = size_problem(notification)
    if problem:
        return problem
    if notification["send_at"] is not None and notification["send_at"] - now_utc() > MAX_SCHEDULE:
        return Problem("invalid_send_at", f"send_at {notification['send_at']:%Y-%m-%dT%H:%M:%SZ} is more than "
                                          f"{MAX_SCHEDULE.days} days ahead")
    offered = [part["channel"] for part in template["parts"]]
    asked = notification["channels"]
    unavailable = [name for name in asked if name not in CHANNELS]
    if unavailable:
        return Problem("channel_unavailable", f"Herald has no {', '.join(unavailable)} channel; it has {', '.join(CHANNELS)}")
    # Without channels asked for: every channel the template has a part for that Herald delivers on.
    channels = [c for c in asked if c in offered] if asked else [c for c in offered if c in CHANNELS]
    if not channels:
        return Problem("no_channel", f"template has parts for {offered}, the request asked for {asked}")
    fallback = notification["fallback_channel"]
    if fallback is not None and (fallback not in CHANNELS or fallback not in offered):
        return Problem("invalid_fallback", f"fallback_channel {fallback}: the template has parts for {offered}, "
                                           f"Herald has {', '.join(CHANNELS)}")
    checked = channels + [fallback] if fallback is not None and fallback not in channels else channels
    return address_problem(notification, checked, preferences) or channels


def address_problem(notification: dict[str, Any], channels: list[str], preferences: dict[str, Any] | None) -> Problem | None:
    """The first address (from the request or preferences) a channel says is not one of its own."""
    for name in channels:
        channel = CHANNELS[name]
        for address in channel.addresses(notification["recipient"], preferences):
            try:
                channel.normalize(address)
            except ValueError as exc:
                return Problem(channel.invalid_reason, f"{channel.contact} '{address}': {exc}")
    return None


def validate(batch: list[Incoming], context: Context) -> Outputs:
    assert context.templates is not None and context.preferences is not None
    out = context.outputs()
    for record in batch:
        notification = record.value
        preferences = context.preferences.get(notification["tenant"], notification["recipient"]["user_id"])
        template = context.templates.for_notification(notification, preferences)
        result = check(notification, template, preferences)
        if isinstance(result, Problem):
            out.reject(notification, *result)
            continue
        notification["channels"] = result
        out.send(VALIDATED, record.key, notification)
    return out


VALIDATE = StageSpec(
    name="validate",
    doc=__doc__ or "",
    inputs=(ACCEPTED,),
    outputs=(VALIDATED, REJECTED, EVENTS),
    handle=validate,
    tables=("templates", "preferences"),
)
