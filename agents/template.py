"""template: herald.validated → herald.rendered, each channel's content rendered from the template table.

Jinja2's immutable sandbox renders every part: templates are data written by people, so they must
not reach Python internals. The HTML part is autoescaped; subject and text are plain. Undefined
variables are errors. Any exception while rendering rejects the notification with its reason.
"""

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from streams.stage import Context, Incoming, Outputs, StageSpec
from streams.topics import EVENTS, REJECTED, RENDERED, VALIDATED

PLAIN = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)
HTML = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)


class RenderError(Exception):
    pass


@lru_cache(maxsize=4096)
def compiled(source: str, html: bool) -> Template:
    """Parse each template source once; sources are immutable per (id, locale, version)."""
    template = (HTML if html else PLAIN).from_string(source)
    # A template's globals are a ChainMap over the environment's, which every render copies into a
    # dict (most of a short render's cost); the environment is never changed after import.
    template.globals = dict(template.globals)
    return template


def render_part(source: str | None, variables: dict[str, str], html: bool = False) -> str | None:
    if source is None:
        return None
    return compiled(source, html).render(variables)


def render(template: dict[str, Any], channels: list[str], variables: dict[str, str]) -> list[dict[str, Any]]:
    """RenderedContent for each channel; raises RenderError naming the channel and the cause."""
    parts = {part["channel"]: part for part in template["parts"]}
    contents = []
    for channel in channels:
        part = parts[channel]
        try:
            contents.append({
                "channel": channel,
                "subject": render_part(part["subject"], variables),
                "text": render_part(part["text"], variables),
                "html": render_part(part["html"], variables, html=True),
                "data": {},
            })
        except Exception as exc:  # any failure of a person's template is a rejection, never a crash
            raise RenderError(f"{channel} part of '{template['template_id']}' v{template['version']}: "
                              f"{type(exc).__name__}: {exc}") from exc
    return contents


def render_all(batch: list[Incoming], context: Context) -> Outputs:
    assert context.templates is not None and context.preferences is not None
    out = context.outputs()
    for record in batch:
        notification = record.value
        preferences = context.preferences.get(notification["recipient"]["user_id"])
        found = context.templates.for_notification(notification, preferences)
        if found is None:  # deleted between validate and now
            out.reject(notification, "unknown_template", f"no template '{notification['template_id']}'")
            continue
        try:
            notification["rendered"] = render(found, notification["channels"], notification["variables"])
        except RenderError as exc:
            out.reject(notification, "template_error", str(exc))
            continue
        notification["template_version"] = found["version"]
        out.send(RENDERED, record.key, notification)
        out.event(notification, "rendered")
    return out


TEMPLATE = StageSpec(
    name="template",
    doc=__doc__ or "",
    inputs=(VALIDATED,),
    outputs=(RENDERED, REJECTED, EVENTS),
    handle=render_all,
    tables=("templates", "preferences"),
)
