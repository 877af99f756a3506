"""The HTTP API for what the CLI does: templates, preferences and scheduled notifications, each
scoped to the caller's tenant (`gateway.auth.tenant_of`, never the body).

PUT   /v1/templates/{template_id}/versions/{version}          publish a version (TemplateUpserted on herald.templates)
GET   /v1/templates                                           the tenant's templates: ids, locales, versions
GET   /v1/templates/{template_id}/versions/{version}?locale=  one version
POST  /v1/templates/{template_id}/versions/{version}/preview  render it with sample variables
GET   /v1/preferences/{user_id}                               a user's preferences
PUT   /v1/preferences/{user_id}                               replace them (PreferencesUpdated on herald.preferences)
PATCH /v1/preferences/{user_id}                               opt one category × channel out, or back in
GET   /v1/scheduled?limit=                                    deliveries waiting for their send_at
(and DELETE /v1/notifications/{id} cancels one: gateway/server.py)

Writes are built and checked by gateway/writes.py, the functions `herald templates put` and `herald
prefs set` use, and answer 202 once Kafka has the record. Reads come from the compacted logs as this
gateway folded them (streams/tables.py: read from the beginning, then tailed), so a GET right after a
PUT may not show it yet, and a PATCH changes the preferences as folded so far. Until a log caught up,
what reads it answers 503. A preview renders with the template stage's own bounded sandbox
(agents/template.py `render`, the same limits). Scheduled deliveries come from ClickHouse: a
`scheduled` event and no final status yet on that channel, less what was cancelled (herald.cancellations,
folded here too), so the list lags the pipeline by the sink's batch.
"""

from copy import copy
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, create_model

from agents.sandbox import Limits
from agents.template import RenderError, RenderLimit, render
from gateway.auth import tenant_of
from gateway.errors import invalid, json_error, problem
from gateway.follow import Follower
from gateway.openapi import NOT_FOUND, UNAVAILABLE, Inputs, Operation, Reply, endpoint, reply
from gateway.server import (MAX_EMAIL_CHARS, MAX_KEY_CHARS, MAX_LOCALE_CHARS, MAX_NAME_CHARS, MAX_PHONE_CHARS,
                            MAX_PUSH_TOKEN_CHARS, MAX_PUSH_TOKENS, MAX_TIME_ZONE_CHARS, Channels, Variables, plain)
from gateway.writes import Refused, build_preferences, build_template, preferences_entry, template_entry, with_opt_out
from schemas.models import AvroInt, Channel, OptOut, PreferencesUpdated, RenderedContent, TemplateUpserted
from sinks.queries import scheduled
from streams.tables import CancellationTable, PreferenceTable, TemplateTable
from streams.topics import CANCELLATIONS, PREFERENCES, TEMPLATES

if TYPE_CHECKING:
    from gateway.server import Gateway

MAX_URL_CHARS = 2048
MAX_OPT_OUTS = 256
SCHEDULED_PAGE_DEFAULT, SCHEDULED_PAGE_MAX = 100, 1000
# Templates are keyed `<id>/<locale>/<version>` on herald.templates: neither id nor locale holds a '/'.
TemplateId = Annotated[plain(MAX_KEY_CHARS), Field(min_length=1, pattern=r"^[^/]+$")]
Locale = Annotated[str, Field(min_length=1, max_length=MAX_LOCALE_CHARS, pattern=r"^[A-Za-z0-9-]+$")]
Version = Annotated[AvroInt, Field(ge=1)]
UserId = Annotated[plain(MAX_KEY_CHARS), Field(min_length=1)]


def body_of(model: type[BaseModel], name: str, exclude: tuple[str, ...], **narrowed: Any) -> Any:
    """`model`'s fields less `exclude` (what the path and the API key say), some narrowed to the
    gateway's limits: the body a caller sends for it, with the same names, defaults and docs."""
    fields = {field: (narrowed.get(field, info.annotation), copy(info))
              for field, info in model.model_fields.items() if field not in exclude}
    return create_model(name, __config__=ConfigDict(extra="forbid", use_attribute_docstrings=True),
                        __doc__=model.__doc__, **fields)


TemplateBody = body_of(
    TemplateUpserted, "TemplateBody", ("template_id", "tenant", "version", "deleted", "updated_at"),
    locale=Locale, category=plain(MAX_NAME_CHARS),
    variables=Annotated[list[plain(MAX_NAME_CHARS)], Field(max_length=256)],
)
PreferencesBody = body_of(
    PreferencesUpdated, "PreferencesBody", ("user_id", "tenant", "updated_at"),
    email=plain(MAX_EMAIL_CHARS) | None, phone=plain(MAX_PHONE_CHARS) | None,
    push_tokens=Annotated[list[plain(MAX_PUSH_TOKEN_CHARS)], Field(max_length=MAX_PUSH_TOKENS)],
    chat_webhook=plain(MAX_URL_CHARS) | None, locale=Locale | None, time_zone=plain(MAX_TIME_ZONE_CHARS) | None,
    opt_outs=Annotated[list[OptOut], Field(max_length=MAX_OPT_OUTS)],
)


class TemplatePath(BaseModel):
    template_id: TemplateId
    version: Version


class LocaleQuery(BaseModel):
    locale: Locale | None = None
    """The locale to read (falling back to its language, then 'en', then any), as notifications do."""


class PutTemplateQuery(BaseModel):
    allow_unsafe_html: bool = False
    """Publish HTML parts that print text unescaped (|safe, autoescape off)."""


class PreviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variables: Variables = {}
    """Sample values; each variable the template declares is needed."""
    channels: Channels = []
    """The channels to render; empty means every part."""


class Preview(BaseModel):
    template_id: str
    version: int
    locale: str
    rendered: list[RenderedContent]


class TemplateSummary(BaseModel):
    template_id: str
    locale: str
    versions: list[int]
    """Oldest first; notifications render the last unless they name one."""
    category: str
    """The latest version's category."""


class TemplateList(BaseModel):
    templates: list[TemplateSummary]


class UserPath(BaseModel):
    user_id: UserId


class OptOutChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: Annotated[plain(MAX_NAME_CHARS), Field(min_length=1)]
    """The category, or '*' for every category."""
    channel: Channel
    opted_out: bool
    """True opts the user out of this category on this channel; false opts them back in."""


class ScheduledQuery(BaseModel):
    limit: int = Field(SCHEDULED_PAGE_DEFAULT, ge=1, le=SCHEDULED_PAGE_MAX)


class ScheduledDelivery(BaseModel):
    notification_id: str
    channel: str
    template_id: str
    category: str
    send_at: datetime | None
    """When it goes (null if the event did not say)."""
    scheduled_at: datetime
    """When route scheduled it."""


class ScheduledList(BaseModel):
    deliveries: list[ScheduledDelivery]
    """First scheduled first; cancel one with DELETE /v1/notifications/{id}."""


def not_found(what: str) -> web.Response:
    return json_error(404, "not_found", what)


def still_reading(spec_name: str) -> web.Response:
    return json_error(503, "unavailable", f"still reading {spec_name}", headers={"Retry-After": "1"})


def summaries(table: TemplateTable, tenant: str) -> list[TemplateSummary]:
    found = []
    for (owner, template_id), locales in sorted(table.templates.items()):
        if owner != tenant:
            continue
        for locale, versions in sorted(locales.items()):
            mine = sorted(versions)
            if mine:
                found.append(TemplateSummary(template_id=template_id, locale=locale, versions=mine,
                                             category=versions[mine[-1]]["category"]))
    return found


def send_at_of(detail: str) -> datetime | None:
    """The time in route's `scheduled` event detail ("until 2026-11-25T10:00:00.000000Z")."""
    try:
        return datetime.strptime(detail.removeprefix("until "), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


class Api:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        settings, serde = gateway.settings, gateway.serde
        self.templates = Follower(lambda: TemplateTable(settings, serde))
        self.preferences = Follower(lambda: PreferenceTable(settings, serde))
        self.cancellations = Follower(lambda: CancellationTable(settings, serde))
        self.limits = Limits.of(settings)

    def attach(self, app: web.Application) -> None:
        for follower in (self.templates, self.preferences, self.cancellations):
            follower.attach(app)
        add = app.router.add_route
        templates, preferences = ("templates",), ("preferences",)
        add("PUT", "/v1/templates/{template_id}/versions/{version}", endpoint(Operation(
            "Publish a template version (replacing one of the same id, locale and version)",
            {202: Reply("Kafka has it; what was published", TemplateUpserted), **UNAVAILABLE},
            path=TemplatePath, query=PutTemplateQuery, body=TemplateBody, tags=templates), self.put_template))
        add("GET", "/v1/templates", endpoint(Operation(
            "The tenant's templates", {200: Reply("each template id and locale, with its versions", TemplateList),
                                       **UNAVAILABLE}, tags=templates), self.list_templates))
        add("GET", "/v1/templates/{template_id}/versions/{version}", endpoint(Operation(
            "One version of a template", {200: Reply("the template", TemplateUpserted), **NOT_FOUND, **UNAVAILABLE},
            path=TemplatePath, query=LocaleQuery, tags=templates), self.get_template))
        add("POST", "/v1/templates/{template_id}/versions/{version}/preview", endpoint(Operation(
            "Render a template version with sample variables, as the template stage would",
            {200: Reply("each channel's content", Preview), **NOT_FOUND, **UNAVAILABLE},
            path=TemplatePath, query=LocaleQuery, body=PreviewBody, tags=templates), self.preview))
        add("GET", "/v1/preferences/{user_id}", endpoint(Operation(
            "A user's preferences", {200: Reply("the preferences", PreferencesUpdated), **NOT_FOUND, **UNAVAILABLE},
            path=UserPath, tags=preferences), self.get_preferences))
        add("PUT", "/v1/preferences/{user_id}", endpoint(Operation(
            "Replace a user's preferences",
            {202: Reply("Kafka has them; what was published", PreferencesUpdated), **UNAVAILABLE},
            path=UserPath, body=PreferencesBody, tags=preferences), self.put_preferences))
        add("PATCH", "/v1/preferences/{user_id}", endpoint(Operation(
            "Opt a user out of one category on one channel, or back in",
            {202: Reply("Kafka has the user's preferences with the change; what was published", PreferencesUpdated),
             **UNAVAILABLE}, path=UserPath, body=OptOutChange, tags=preferences), self.patch_preferences))
        add("GET", "/v1/scheduled", endpoint(Operation(
            "Deliveries waiting for their send_at",
            {200: Reply("at most `limit`, first scheduled first", ScheduledList), **UNAVAILABLE},
            query=ScheduledQuery, tags=("scheduled",)), self.list_scheduled))

    async def publish(self, topic: str, entry: tuple[bytes, Any], what: str) -> web.Response | None:
        key, record = entry
        sent = await self.gateway.send(topic, key, self.gateway.serde.encode_model(record), what)
        return sent if isinstance(sent, web.Response) else None

    # --- templates --------------------------------------------------------------------------------------

    def template_of(self, request: web.Request, inputs: Inputs) -> dict[str, Any] | web.Response:
        table = self.templates.ready()
        if table is None:
            return still_reading(TEMPLATES.name)
        path = inputs.path
        found = table.find(tenant_of(request), path.template_id, inputs.query.locale, path.version)
        if found is None:
            return not_found(f"no template '{path.template_id}' v{path.version}")
        return found

    async def put_template(self, request: web.Request, inputs: Inputs) -> web.Response:
        document = inputs.body.model_dump() | {"template_id": inputs.path.template_id,
                                               "version": inputs.path.version, "tenant": tenant_of(request)}
        try:
            entry = template_entry(build_template(document, inputs.query.allow_unsafe_html))
        except Refused as exc:
            return invalid(exc.problems)
        return await self.publish(TEMPLATES.name, entry, "template") or reply(entry[1], status=202)

    async def list_templates(self, request: web.Request, inputs: Inputs) -> web.Response:
        table = self.templates.ready()
        if table is None:
            return still_reading(TEMPLATES.name)
        return reply(TemplateList(templates=summaries(table, tenant_of(request))))

    async def get_template(self, request: web.Request, inputs: Inputs) -> web.Response:
        found = self.template_of(request, inputs)
        return found if isinstance(found, web.Response) else reply(TemplateUpserted.from_avro(found))

    async def preview(self, request: web.Request, inputs: Inputs) -> web.Response:
        found = self.template_of(request, inputs)
        if isinstance(found, web.Response):
            return found
        offered = [part["channel"] for part in found["parts"]]
        channels = [str(c) for c in inputs.body.channels] or offered
        variables = inputs.body.variables
        problems = [problem(f"channels.{i}", f"the template has no {c} part (it has {', '.join(offered) or 'none'})")
                    for i, c in enumerate(channels) if c not in offered]
        problems += [problem(f"variables.{name}", "the template declares it: give a sample value")
                     for name in found["variables"] if name not in variables]
        if problems:
            return invalid(problems)
        try:  # on the event loop: renders never overlap (agents/sandbox.py's Budget), and each is bounded
            rendered = render(found, channels, variables, self.limits)
        except RenderError as exc:
            code = "template_limit" if isinstance(exc, RenderLimit) else "template_error"
            return json_error(422, code, [problem("variables", str(exc))])
        return reply(Preview(template_id=found["template_id"], version=found["version"], locale=found["locale"],
                             rendered=[RenderedContent.model_validate(content) for content in rendered]))

    # --- preferences ------------------------------------------------------------------------------------

    def folded_preferences(self, request: web.Request, user_id: str) -> dict[str, Any] | None | web.Response:
        table = self.preferences.ready()
        if table is None:
            return still_reading(PREFERENCES.name)
        return table.get(tenant_of(request), user_id)

    async def get_preferences(self, request: web.Request, inputs: Inputs) -> web.Response:
        found = self.folded_preferences(request, inputs.path.user_id)
        if found is None:
            return not_found(f"no preferences of user '{inputs.path.user_id}'")
        return found if isinstance(found, web.Response) else reply(PreferencesUpdated.from_avro(found))

    async def put_preferences(self, request: web.Request, inputs: Inputs) -> web.Response:
        document = inputs.body.model_dump() | {"user_id": inputs.path.user_id, "tenant": tenant_of(request)}
        return await self.publish_preferences(document)

    async def patch_preferences(self, request: web.Request, inputs: Inputs) -> web.Response:
        found = self.folded_preferences(request, inputs.path.user_id)
        if isinstance(found, web.Response):
            return found
        change = inputs.body
        base = found or {"user_id": inputs.path.user_id, "tenant": tenant_of(request)}
        return await self.publish_preferences(with_opt_out(base, change.category, change.channel, change.opted_out))

    async def publish_preferences(self, document: dict[str, Any]) -> web.Response:
        try:
            entry = preferences_entry(build_preferences(document))
        except Refused as exc:
            return invalid(exc.problems)
        return await self.publish(PREFERENCES.name, entry, "preferences") or reply(entry[1], status=202)

    # --- scheduled --------------------------------------------------------------------------------------

    async def list_scheduled(self, request: web.Request, inputs: Inputs) -> web.Response:
        cancellations = self.cancellations.ready()
        if cancellations is None:
            return still_reading(CANCELLATIONS.name)
        tenant = tenant_of(request)
        cancelled = [str(notification_id) for notification_id, by in cancellations.cancelled if by == tenant]
        rows = await self.gateway.query(scheduled, tenant, inputs.query.limit, cancelled)
        if isinstance(rows, web.Response):
            return rows
        return reply(ScheduledList(deliveries=[
            ScheduledDelivery(notification_id=row["notification_id"], channel=row["channel"],
                              template_id=row["template_id"], category=row["category"],
                              send_at=send_at_of(row["detail"]),
                              scheduled_at=datetime.fromtimestamp(row["scheduled_at_ms"] / 1000, UTC))
            for row in rows]))


def register(app: web.Application, gateway: "Gateway") -> Api:
    api = Api(gateway)
    api.attach(app)
    return api
