"""Templates and preferences as callers write them, built, checked and keyed in one place: the CLI
(`herald templates put`, `herald prefs set`) and the gateway's HTTP API (gateway/api.py) both publish
what these functions return, each with its own Kafka client.

A field Herald does not honour yet is refused, naming it (`NOT_HONOURED`): a caller who sets quiet
hours must not believe they are kept while they are not. Remove a field here when its stage honours it.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo
from typing import Any

from pydantic import BaseModel, ValidationError

from agents.caps import valid as valid_cap
from agents.quiet_hours import BAD_ZONE, parse_hhmm
from agents.template import digest_problems, template_problems
from gateway.errors import field_errors, problem
from schemas.models import OptOut, PreferencesUpdated, TemplateUpserted
from streams.tables import preference_key, template_key, valid_tenant

# Fields a stage does not act on yet, per model: refused when set to anything but their default.
# None left since digests are honoured (agents/digest.py); the next unhonoured field goes here.
NOT_HONOURED: dict[type[BaseModel], tuple[str, ...]] = {}


class Refused(ValueError):
    """A template or preferences that must not be published; `problems` name each field and why."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.problems = problems


def unhonoured(record: BaseModel, at: str = "") -> list[dict[str, str]]:
    """Each field of `record`, or of the records inside it, that is set though Herald does not honour it yet."""
    problems = []
    for model, names in NOT_HONOURED.items():
        if isinstance(record, model):
            for name in names:
                info = type(record).model_fields[name]
                if getattr(record, name) != info.get_default(call_default_factory=True):
                    problems.append(problem(f"{at}{name}", "not honoured yet: Herald would ignore it, so it is "
                                                           "refused; leave it out"))
    for name in type(record).model_fields:
        value = getattr(record, name)
        inner = value if isinstance(value, list) else [value]
        for index, item in enumerate(inner):
            if isinstance(item, BaseModel):
                where = f"{at}{name}." + (f"{index}." if isinstance(value, list) else "")
                problems += unhonoured(item, where)
    return problems


def checked(model: type[BaseModel], document: Mapping[str, Any]) -> Any:
    try:
        record = model.model_validate(document)
    except ValidationError as exc:
        raise Refused(field_errors(exc)) from None
    problems = unhonoured(record) + tenant_problems(record.tenant)
    if problems:
        raise Refused(problems)
    return record


def tenant_problems(tenant: str) -> list[dict[str, str]]:
    """Why a tenant name cannot be in a log key (streams.tables.tenant_key); none when it can."""
    try:
        valid_tenant(tenant)
    except ValueError as exc:
        return [problem("tenant", str(exc))]
    return []


def build_template(document: Mapping[str, Any], allow_unsafe_html: bool = False) -> TemplateUpserted:
    """A TemplateUpserted from a document (`updated_at` defaults to now), once every part compiles
    with the template stage's own compiler, no HTML part prints text unescaped (unless allowed) and
    every frequency cap is at least 1 (as route needs: agents/caps.py)."""
    template: TemplateUpserted = checked(TemplateUpserted, {"updated_at": datetime.now(UTC), **document})
    as_dict = template.model_dump()
    # The stage's own checks, one part at a time so that each problem names its part; caps and digest apart.
    problems = [problem(f"parts.{index}", message)
                for index, part in enumerate(as_dict["parts"])
                for message in template_problems(as_dict | {"parts": [part], "frequency_caps": [], "digest": None},
                                                 allow_unsafe_html)]
    problems += [problem(f"frequency_caps.{index}", "limit and period_s must be at least 1")
                 for index, cap in enumerate(as_dict["frequency_caps"]) if not valid_cap(cap)]
    problems += [problem("digest", message) for message in digest_problems(as_dict)]
    if problems:
        raise Refused(problems)
    return template


def template_entry(template: TemplateUpserted) -> tuple[bytes, TemplateUpserted]:
    """The (key, record) to publish on herald.templates."""
    return template_key(template.tenant, template.template_id, template.locale, template.version), template


def build_preferences(document: Mapping[str, Any]) -> PreferencesUpdated:
    """A user's whole preferences from a document (`updated_at` defaults to now), with a time zone
    zoneinfo knows and quiet hours of two different HH:MM times (as route reads them: agents/quiet_hours.py)."""
    preferences: PreferencesUpdated = checked(PreferencesUpdated, {"updated_at": datetime.now(UTC), **document})
    problems = []
    if preferences.time_zone is not None:
        try:
            ZoneInfo(preferences.time_zone)
        except BAD_ZONE:
            problems.append(problem("time_zone", f"{preferences.time_zone!r} is no IANA time zone (such as Asia/Tokyo)"))
    quiet = preferences.quiet_hours
    if quiet is not None:
        times = {}
        for end in ("start", "end"):
            try:
                times[end] = parse_hhmm(getattr(quiet, end))
            except ValueError as exc:
                problems.append(problem(f"quiet_hours.{end}", str(exc)))
        if len(times) == 2 and times["start"] == times["end"]:
            problems.append(problem("quiet_hours", "start and end are the same time"))
    if problems:
        raise Refused(problems)
    return preferences


def preferences_entry(preferences: PreferencesUpdated) -> tuple[bytes, PreferencesUpdated]:
    """The (key, record) to publish on herald.preferences: compaction keeps the latest per key."""
    return preference_key(preferences.tenant, preferences.user_id), preferences


def with_opt_out(preferences: Mapping[str, Any], category: str, channel: str, opted_out: bool) -> dict[str, Any]:
    """The preferences document with one category × channel opted out (or back in), updated now."""
    opt_outs = [o for o in preferences.get("opt_outs", []) if (o["category"], o["channel"]) != (category, channel)]
    if opted_out:
        opt_outs.append(OptOut(category=category, channel=channel).model_dump())
    return {**preferences, "opt_outs": opt_outs, "updated_at": datetime.now(UTC)}
