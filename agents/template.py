"""template: herald.validated → herald.rendered, each channel's content rendered from the template table.

Jinja2's immutable sandbox renders every part: templates are data written by people, so they must
not reach Python internals. The HTML part is autoescaped; subject and text are plain. Undefined
variables are errors. Any exception while rendering rejects the notification with its reason
(`template_error`).

Templates are also bounded, because one that runs for minutes or allocates gigabytes would block
the worker or get it killed, and every worker that took the partition over would die on the same
message. A notification's parts render within `template_max_render_ms`; a part's output, and any
string or list a template builds, has at most `template_max_output_bytes`; a range, and any list
it builds, has at most `template_max_range` items; and a part builds at most 16 times its output
limit in all. A template that breaks a bound is rejected `template_limit`, naming the bound. The
bounded sandbox lives in agents/sandbox.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import Template, nodes

from agents.caps import cap_problems
from agents.sandbox import BUDGET, DEFAULT_LIMITS, HTML, PLAIN, Limits, TemplateLimit, render_bounded
from streams.stage import Context, Incoming, Outputs, StageSpec, user_key
from streams.topics import DIGEST, EVENTS, REJECTED, RENDERED, VALIDATED

FIELDS = ("subject", "text", "html")

class RenderError(Exception):
    """A template that could not render: rejected `template_error`."""


class RenderLimit(RenderError):
    """A template that broke a bound: rejected `template_limit`."""




@lru_cache(maxsize=4096)
def compiled(source: str, html: bool) -> Template:
    """Parse each template source once; sources are immutable per (id, locale, version).

    The one compile of a part, for the stage and for `herald templates put` (template_problems).
    Render with `render` or `render_part`: they start the render's Budget.
    """
    BUDGET.idle()  # constant folding may call filters
    template = (HTML if html else PLAIN).from_string(source)
    # A template's globals are a ChainMap over the environment's, which every render copies into a
    # dict (most of a short render's cost); the environment is never changed after import.
    template.globals = dict(template.globals)
    return template


def render_part(source: str | None, variables: dict[str, Any], html: bool = False,
                limits: Limits = DEFAULT_LIMITS) -> str | None:
    """One part alone, within `limits`."""
    if source is None:
        return None
    template = compiled(source, html)
    BUDGET.begin(limits)
    return render_bounded(template, variables, limits)


def failure(where: str, exc: BaseException) -> RenderError:
    """The rejection for an exception raised by compiling or rendering a part."""
    if isinstance(exc, TemplateLimit):
        return RenderLimit(f"{where}: {exc}")
    if isinstance(exc, RecursionError):
        return RenderLimit(f"{where}: nested too deeply (RecursionError: {exc})")
    if isinstance(exc, MemoryError):
        return RenderLimit(f"{where}: out of memory (MemoryError)")
    return RenderError(f"{where}: {type(exc).__name__}: {exc}")


def render(template: dict[str, Any], channels: list[str], variables: dict[str, Any],
           limits: Limits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
    """RenderedContent for each channel; raises RenderError (RenderLimit for a bound) naming the
    channel, the part and the cause. The time limit covers all the channels' parts; compiling a
    template the first time is not counted."""
    parts = {part["channel"]: part for part in template["parts"]}
    name = f"'{template['template_id']}' v{template['version']}"
    sources: dict[tuple[str, str], Template] = {}
    for channel in channels:
        for field in FIELDS:
            if parts[channel][field] is not None:
                try:
                    sources[channel, field] = compiled(parts[channel][field], field == "html")
                except Exception as exc:  # any failure of a person's template is a rejection, never a crash
                    raise failure(f"{channel} part of {name} ({field})", exc) from exc
    BUDGET.begin(limits)
    contents = []
    for channel in channels:
        content: dict[str, Any] = {"channel": channel}
        for field in FIELDS:
            source = sources.get((channel, field))
            try:
                content[field] = None if source is None else render_bounded(source, variables, limits)
            except Exception as exc:
                raise failure(f"{channel} part of {name} ({field})", exc) from exc
        content["data"] = {}
        contents.append(content)
    return contents


def unsafe_html(source: str) -> str | None:
    """Why an HTML part's source prints text unescaped (|safe, autoescaping turned off), or None."""
    for node in HTML.parse(source).find_all((nodes.Filter, nodes.EvalContextModifier)):
        if isinstance(node, nodes.Filter):
            if node.name == "safe":
                return "uses |safe"
            first = node.args[0] if node.args else None
            if node.name == "map" and isinstance(first, nodes.Const) and first.value == "safe":
                return "uses map('safe')"
        else:
            for option in node.options:
                if option.key == "autoescape" and not (
                        isinstance(option.value, nodes.Const) and option.value.value is True):
                    return "turns autoescaping off ({% autoescape %})"
    return None


def digest_problems(template: Mapping[str, Any]) -> list[str]:
    """Why a template's digest could not work: a window or size under 1, a key it does not declare."""
    digest = template.get("digest")
    if digest is None:
        return []
    problems = [f"{field} is {digest[field]}; at least 1" for field in ("window_s", "max_items") if digest[field] < 1]
    if digest["key"] is not None and digest["key"] not in template["variables"]:
        problems.append(f"key '{digest['key']}' is not one of the template's variables "
                        f"({', '.join(template['variables']) or 'none'})")
    return problems


def template_problems(template: Mapping[str, Any], allow_unsafe_html: bool = False) -> list[str]:
    """Why a TemplateUpserted must not be published (`herald templates put`): a part that does not
    compile (with the stage's own `compiled`), an HTML part that prints text unescaped, a frequency
    cap under 1 (agents/caps.py), or a digest that could not work."""
    if template.get("deleted"):
        return []
    name = f"template '{template['template_id']}' v{template['version']} ({template.get('locale', 'en')})"
    problems = cap_problems(template) + [f"{name}, digest: {message}" for message in digest_problems(template)]
    for part in template["parts"]:
        for field in FIELDS:
            source = part.get(field)
            if source is None:
                continue
            where = f"{name}, {part['channel']} part, {field}"
            try:
                compiled(source, field == "html")
            except Exception as exc:
                problems.append(f"{where}: does not compile: {type(exc).__name__}: {exc}")
                continue
            reason = unsafe_html(source) if field == "html" and not allow_unsafe_html else None
            if reason:
                problems.append(f"{where}: {reason}, which prints text unescaped "
                                f"(--allow-unsafe-html publishes it anyway)")
    return problems


def rendered_channels(notification: dict[str, Any]) -> list[str]:
    """The notification's channels, and its fallback channel's part (route keeps it aside for deliver)."""
    fallback = notification["fallback_channel"]
    channels = notification["channels"]
    return [*channels, fallback] if fallback is not None and fallback not in channels else channels


def variables_of(notification: dict[str, Any]) -> dict[str, Any]:
    """What a notification's template sees: its variables and, on a digest, `items` and `count`."""
    items = notification["digest_items"]
    return {**notification["variables"], "items": items, "count": len(items)} if items else notification["variables"]


def render_all(batch: list[Incoming], context: Context) -> Outputs:
    assert context.templates is not None and context.preferences is not None
    out = context.outputs()
    limits = Limits.of(context.settings)
    for record in batch:
        notification = record.value
        preferences = context.preferences.get(notification["tenant"], notification["recipient"]["user_id"])
        found = context.templates.for_notification(notification, preferences)
        if found is None:  # deleted between validate and now
            out.reject(notification, "unknown_template", f"no template '{notification['template_id']}'")
            continue
        if found["digest"] is not None and not notification["digest_items"]:
            out.send(DIGEST, user_key(notification).encode(), notification)
            continue
        try:
            notification["rendered"] = render(found, rendered_channels(notification), variables_of(notification), limits)
        except RenderLimit as exc:
            out.reject(notification, "template_limit", str(exc))
            continue
        except RenderError as exc:
            out.reject(notification, "template_error", str(exc))
            continue
        notification["template_version"] = found["version"]
        out.send(RENDERED, user_key(notification).encode(), notification)
        out.event(notification, "rendered")
    return out


TEMPLATE = StageSpec(
    name="template",
    doc=__doc__ or "",
    inputs=(VALIDATED,),
    outputs=(RENDERED, DIGEST, REJECTED, EVENTS),
    handle=render_all,
    tables=("templates", "preferences"),
)
