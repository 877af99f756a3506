"""The `herald` command line."""

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tooling.processes import run_stage_processes
from streams.settings import Settings, get_settings
from streams.topics import PREFERENCES, TEMPLATES

app = typer.Typer(help="Herald: event-sourced notifications on Kafka, Avro and ClickHouse.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics of the catalog.", no_args_is_help=True)
templates_app = typer.Typer(help="Templates (herald.templates).", no_args_is_help=True)
prefs_app = typer.Typer(help="User preferences (herald.preferences).", no_args_is_help=True)
inbox_app = typer.Typer(help="In-app inboxes (herald.inbox, served by the gateway).", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants' API keys (herald.tenants), through the gateway with HERALD_ADMIN_API_KEY.",
                          no_args_is_help=True)
schemas_app = typer.Typer(help="Avro schemas (schemas/) and the schema registry.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(templates_app, name="templates")
app.add_typer(prefs_app, name="prefs")
app.add_typer(inbox_app, name="inbox")
app.add_typer(tenants_app, name="tenants")
app.add_typer(schemas_app, name="schemas")
console = Console()



@topics_app.command("create")
def topics_create() -> None:
    """Create every topic of the catalog that is missing (idempotent)."""
    from streams.topics import CATALOG, create_topics

    created = create_topics(get_settings())
    console.print(f"[green]{len(created)} created[/], {len(CATALOG) - len(created)} already there")
    for name in created:
        console.print(f"  + {name}")


@schemas_app.command("register")
def schemas_register() -> None:
    """Register every schema (kept versions first, then the current one) with the Confluent-compatible
    registry at HERALD_SCHEMA_REGISTRY_URL, under its full name (RecordNameStrategy)."""
    from streams.codec import default_serde

    settings = get_settings()
    if not settings.schema_registry_url:
        console.print("[red]HERALD_SCHEMA_REGISTRY_URL is not set[/]")
        raise typer.Exit(1)
    ids = default_serde().register_all()
    console.print(f"[green]{len(ids)} subjects registered[/] at {settings.schema_registry_url}")
    for subject, schema_id in ids.items():
        console.print(f"  {subject}  id {schema_id}")


@app.command()
def migrate(
    down: Annotated[int, typer.Option(help="Revert this many migrations instead of applying.")] = 0,
) -> None:
    """Apply the ClickHouse migrations in sinks/migrations (idempotent)."""
    from sinks.migrate import migrate_down, migrate_up

    settings = get_settings()
    names = migrate_down(settings, down) if down else migrate_up(settings)
    verb = "reverted" if down else "applied"
    console.print(f"[green]{len(names)} migration(s) {verb}[/] in ClickHouse database {settings.clickhouse_database}")
    for name in names:
        console.print(f"  {name}")


@app.command()
def worker(
    stage: Annotated[list[str], typer.Option(help="Stage(s) to run, as named in agents/registry.py, or all.")] = ["all"],
    loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug.")] = "warn",
) -> None:
    """Run one stage as a Faust worker, or several (all), each in processes of its own
    (`HERALD_WORKER_REPLICAS` of them per stage)."""
    # Late, and the registry imports a stage only when asked for it: the supervisor of `--stage all`
    # holds none of the stages' libraries in memory.
    from agents.registry import STAGES
    from streams.worker import run_stage

    names = list(STAGES) if "all" in stage else stage
    unknown = set(names) - set(STAGES)
    if unknown:
        raise typer.BadParameter(f"unknown stage(s): {', '.join(sorted(unknown))}")
    replicas = get_settings().worker_replicas
    if len(names) > 1 or replicas > 1:
        raise typer.Exit(run_stage_processes(names, loglevel, replicas))
    run_stage(names[0], loglevel)


@app.command()
def gateway() -> None:
    """Run the HTTP gateway in the foreground."""
    from gateway.server import serve

    serve(get_settings())


@app.command()
def peers() -> None:
    """Run the local HTTP provider peers (tooling/peers: SMS, push, chat) in the foreground."""
    from tooling.peers.server import serve

    serve(get_settings())


@app.command()
def mailbox() -> None:
    """Run the local SMTP provider (aiosmtpd) in the foreground."""
    from tooling.local import mailbox_dir
    from tooling.mailbox import serve

    settings = get_settings()
    serve(mailbox_dir(settings), settings.smtp_host, settings.smtp_port)


@app.command()
def up() -> None:
    """Start Kafka, ClickHouse, the mailbox, the workers and the gateway in the background."""
    from tooling.local import NotReady, up as start_stack

    try:
        with console.status("starting Herald…") as status:
            start_stack(get_settings(), lambda line: (console.print(f"[green]✓[/] {line}"), status.update(line)))
    except NotReady as exc:
        console.print(f"[red]✗[/] {escape(str(exc))}")
        raise typer.Exit(1)


@app.command()
def down() -> None:
    """Stop everything `herald up` started."""
    from tooling.local import down as stop_stack

    stop_stack(get_settings(), lambda line: console.print(f"[yellow]■[/] {line}"))


@templates_app.command("put")
def templates_put(
    path: Annotated[Path, typer.Argument(exists=True, help="JSON file: a TemplateUpserted, or a list of them.")],
    allow_unsafe_html: Annotated[bool, typer.Option(
        "--allow-unsafe-html", help="Publish HTML parts that print text unescaped (|safe, autoescape off).")] = False,
) -> None:
    """Publish templates to herald.templates, once every part compiles and no HTML part prints text
    unescaped (unless --allow-unsafe-html); otherwise publish nothing."""
    from gateway.writes import Refused, build_template, template_entry
    from tooling.producer import publish

    documents = json.loads(path.read_text())
    records = []
    problems = []
    for index, document in enumerate(documents if isinstance(documents, list) else [documents]):
        try:
            records.append(template_entry(build_template(document, allow_unsafe_html)))
        except Refused as exc:
            problems += [f"template {index} ({document.get('template_id')!r}), {p['field']}: {p['message']}"
                         for p in exc.problems]
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/] {escape(problem)}")
        console.print(f"[red]nothing published[/] ({len(problems)} problem(s) in {escape(str(path))})")
        raise typer.Exit(1)
    publish(TEMPLATES, records)
    for _, template in records:
        console.print(f"[green]✓[/] template {template.template_id} v{template.version} ({template.locale})")


@prefs_app.command("set")
def prefs_set(
    user_id: str,
    email: Annotated[Optional[str], typer.Option(help="Email address.")] = None,
    phone: Annotated[Optional[str], typer.Option(help="Phone number, E.164.")] = None,
    push_token: Annotated[list[str], typer.Option(help="A device's push token (apns:…, fcm:… or webpush:…); repeatable.")] = [],
    chat_webhook: Annotated[Optional[str], typer.Option(help="Chat webhook URL (Slack incoming webhook or a signed generic one).")] = None,
    locale: Annotated[Optional[str], typer.Option(help="BCP 47 locale.")] = None,
    time_zone: Annotated[Optional[str], typer.Option(help="IANA time zone, e.g. Asia/Tokyo (quiet hours are read in it).")] = None,
    quiet_hours: Annotated[Optional[str], typer.Option(
        help="HH:MM-HH:MM in the user's time zone, e.g. 22:00-07:00: notifications wait until its end "
             "(not priority high, not critical templates).")] = None,
    opt_out: Annotated[list[str], typer.Option(help="CATEGORY:CHANNEL to opt out of ('*' for all categories).")] = [],
    tenant: Annotated[str, typer.Option(help="The tenant whose user this is.")] = "default",
) -> None:
    """Replace a user's preferences (herald.preferences keeps the latest per tenant and user)."""
    from agents.quiet_hours import parse_window
    from gateway.writes import Refused, build_preferences, preferences_entry
    from tooling.producer import publish

    try:
        window = parse_window(quiet_hours) if quiet_hours is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--quiet-hours") from exc
    opt_outs = []
    for item in opt_out:
        category, _, channel = item.partition(":")
        opt_outs.append({"category": category, "channel": channel})
    try:
        preferences = build_preferences({
            "user_id": user_id, "tenant": tenant, "email": email, "phone": phone, "push_tokens": push_token,
            "chat_webhook": chat_webhook, "locale": locale, "time_zone": time_zone, "opt_outs": opt_outs,
            "quiet_hours": {"start": window[0], "end": window[1]} if window else None,
        })
    except Refused as exc:
        for problem in exc.problems:
            console.print(f"[red]✗[/] {escape(problem['field'])}: {escape(problem['message'])}")
        raise typer.Exit(1)
    publish(PREFERENCES, [preferences_entry(preferences)])
    console.print(f"[green]✓[/] preferences of {user_id}")


@inbox_app.command("token")
def inbox_token(
    user_id: str,
    tenant: str = "default",
    ttl: Annotated[int, typer.Option(help="Seconds the token is valid.")] = 3600,
) -> None:
    """Print a token that opens one user's inbox, signed with HERALD_INBOX__TOKEN_SECRET
    (Authorization: Bearer <token>, or ?token=<token> for EventSource)."""
    from gateway.inbox import mint_token

    print(mint_token(get_settings().inbox.token_secret.get_secret_value(), tenant, user_id, ttl))


@app.command()
def send(
    template: str,
    user_id: str,
    email: Annotated[Optional[str], typer.Option(help="Recipient email address.")] = None,
    var: Annotated[list[str], typer.Option(help="NAME=VALUE template variable.")] = [],
    channel: Annotated[list[str], typer.Option(help="Channel(s); default: the template's.")] = [],
    idempotency_key: Optional[str] = None,
    priority: str = "normal",
    at: Annotated[Optional[datetime], typer.Option(help="Send at this time (UTC unless it says), up to 30 days ahead.")] = None,
    expires_in: Annotated[Optional[float], typer.Option(help="Seconds after which it must not be sent any more.")] = None,
) -> None:
    """Send one notification through the gateway and print its id."""
    from datetime import timedelta

    import httpx

    settings = get_settings()
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    expires = datetime.now(timezone.utc) + timedelta(seconds=expires_in) if expires_in is not None else None
    body = {
        "template_id": template, "recipient": {"user_id": user_id, "email": email},
        "variables": dict(v.split("=", 1) for v in var), "channels": channel,
        "idempotency_key": idempotency_key, "priority": priority,
        "send_at": at.isoformat() if at else None, "expires_at": expires.isoformat() if expires else None,
    }
    response = httpx.post(f"http://{settings.gateway_host}:{settings.gateway_port}/v1/notifications",
                          json=body, headers={"X-API-Key": settings.api_key}, timeout=10)
    if response.status_code != 202:
        console.print(f"[red]{response.status_code}[/] {response.text}")
        raise typer.Exit(1)
    console.print(response.json()["notification_id"])


@app.command()
def status(
    notification_id: uuid.UUID,
    tenant: Annotated[Optional[str], typer.Option(help="Only this tenant's events (default: every tenant's).")] = None,
) -> None:
    """One notification's timeline, from ClickHouse."""
    from sinks.clickhouse_client import connect
    from sinks.queries import timeline

    events = timeline(connect(get_settings()), notification_id, tenant or "")
    if not events:
        console.print(f"[yellow]no events for {notification_id} yet[/]")
        raise typer.Exit(1)
    table = Table("time (UTC)", "stage", "status", "channel", "attempt", "error", "detail", "latency ms",
                  title=f"notification {notification_id}")
    for event in events:
        at = datetime.fromtimestamp(event["at_ms"] / 1000, timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        table.add_row(at, event["stage"], event["status"], event["channel"], str(event["attempt"]),
                      event["error_code"], event["detail"], str(event["latency_ms"]))
    console.print(table)


@app.command()
def report(
    minutes: Annotated[int, typer.Option(help="How far back to look.")] = 60,
    tenant: Annotated[Optional[str], typer.Option(help="Only this tenant's events (default: every tenant's).")] = None,
) -> None:
    """Counts per channel and status, and latency quantiles, from ClickHouse."""
    from sinks.clickhouse_client import connect
    from sinks.queries import counts, latency, providers

    client = connect(get_settings())
    by_status = Table("channel", "status", "events", title=f"lifecycle events, last {minutes} min")
    for channel, state, events in counts(client, minutes * 60, tenant or ""):
        by_status.add_row(channel or "-", state, f"{events:,}")
    quantiles = Table("channel", "sent", "p50 ms", "p95 ms", "p99 ms", title="request → provider latency")
    for channel, sent, p50, p95, p99 in latency(client, minutes * 60, tenant or ""):
        quantiles.add_row(channel, f"{sent:,}", f"{p50:.0f}", f"{p95:.0f}", f"{p99:.0f}")
    by_provider = Table("channel", "provider", "sent", "retried", "failed", "top error codes", title="providers")
    for channel, provider, sent, retried, failed, codes in providers(client, minutes * 60, tenant or ""):
        by_provider.add_row(channel, provider, f"{sent:,}", f"{retried:,}", f"{failed:,}", codes)
    console.print(by_status)
    console.print(by_provider)
    console.print(quantiles)



def wait_settled(ids: list[str], timeout: float, quiet: float = 10) -> list[str]:
    """Poll ClickHouse until every notification of `ids` is settled (sinks.queries.settled), or no new
    event arrived for `quiet` seconds, or `timeout` passed; returns the ids not settled."""
    import time

    from sinks.clickhouse_client import connect
    from sinks.queries import settled, statuses

    client = connect(get_settings())
    deadline = time.monotonic() + timeout
    events, changed = 0, time.monotonic()
    while True:
        found = statuses(client, ids)
        pending = [nid for nid in ids if not settled(found.get(nid, {}))]
        now = time.monotonic()
        count = sum(len(reached) for by_channel in found.values() for reached in by_channel.values())
        if count > events:
            events, changed = count, now
        # A status no stage follows up on (a channel no deliver agent reads yet) never settles.
        if not pending or now >= deadline or (events and now - changed >= quiet):
            return pending
        time.sleep(0.5)


def digest_ids(ids: list[str]) -> list[str]:
    """The digests that notifications of `ids` were gathered into."""
    from sinks.clickhouse_client import connect
    from sinks.queries import digests

    return digests(connect(get_settings()), ids)


def show_landings(settings: Settings, ids: list[str], gateway_url: str) -> None:
    """Where the demo's notifications landed: each provider's local peer, the mailbox and the inbox."""
    from gateway.inbox import mint_token
    from tooling.local import mailbox_dir
    from tooling.mailbox import read_receipts as read_mail_receipts
    from tooling.peers.server import peer_dir, read_receipts

    wanted = set(ids)
    mail = mailbox_dir(settings)
    landed = Table("channel", "provider", "received", title="where the demo's notifications landed")
    emails = sum(1 for r in read_mail_receipts(mail) if r.notification_id in wanted and not r.duplicate)
    landed.add_row("email", "smtp (mailbox)", str(emails))
    for channel, provider in (("sms", "twilio"), ("push", "apns"), ("push", "fcm"), ("push", "webpush"), ("chat", "slack")):
        count = sum(1 for r in read_receipts(peer_dir(settings, provider))
                    if r.get("notification_id") in wanted and not r["duplicate"])
        landed.add_row(channel, provider, str(count))
    console.print(landed)
    # Plain prints: paths and URLs a reader copies must not be wrapped or cut to the terminal's width.
    print(f"mail        {mail / 'messages'}")
    print(f"providers   {settings.data_dir / 'peers'}/<provider>/received.jsonl")
    token = mint_token(settings.inbox.token_secret.get_secret_value(), "default", "alice", 24 * 3600)
    print(f"inbox       curl '{gateway_url}/v1/users/alice/inbox?token={token}'")
    print(f"gateway     {gateway_url}  (API key: {settings.api_key})")
    print(f"dashboard   {gateway_url}/dashboard  (it asks for the API key)")
    print(f"timeline    herald status {ids[0]}")


@app.command()
def cancel(
    notification_id: Annotated[Optional[str], typer.Argument(help="The notification's id.")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(help="Or the idempotency key it was sent with.")] = None,
    tenant: Annotated[str, typer.Option(help="The tenant it was sent as (with --idempotency-key: its id depends on it); "
                                             "the gateway takes the tenant from the API key.")] = "default",
) -> None:
    """Cancel a notification that is not sent yet (a scheduled one), by id or idempotency key."""
    import httpx

    from streams.ids import notification_id as id_of

    if (notification_id is None) == (idempotency_key is None):
        console.print("[red]give the notification id or --idempotency-key, one of them[/]")
        raise typer.Exit(2)
    wanted = notification_id or str(id_of(tenant, idempotency_key, ""))
    settings = get_settings()
    response = httpx.delete(f"http://{settings.gateway_host}:{settings.gateway_port}/v1/notifications/{wanted}",
                            headers={"X-API-Key": settings.api_key}, timeout=10)
    if response.status_code != 202:
        console.print(f"[red]{response.status_code}[/] {response.text}")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {wanted} cancelled: nothing of it not sent yet will be")


def admin_request(method: str, path: str) -> dict:
    """One call to the gateway's admin endpoints (gateway/admin.py) with the admin key; exits on an error."""
    import httpx

    settings = get_settings()
    if not settings.admin_api_key:
        console.print("[red]set HERALD_ADMIN_API_KEY (the gateway's admin key)[/]")
        raise typer.Exit(2)
    response = httpx.request(method, f"http://{settings.gateway_host}:{settings.gateway_port}/v1/admin{path}",
                             headers={"X-API-Key": settings.admin_api_key}, timeout=15)
    if response.status_code >= 300:
        console.print(f"[red]{response.status_code}[/] {escape(response.text)}")
        raise typer.Exit(1)
    return response.json()


@tenants_app.command("create-key")
def tenants_create_key(tenant: str) -> None:
    """Make an API key for TENANT and print it. It is shown this once: Herald keeps only its hash."""
    from urllib.parse import quote

    created = admin_request("POST", f"/tenants/{quote(tenant, safe='')}/keys")
    Console(stderr=True).print(f"[green]✓[/] key {created['key_id']} of tenant {escape(created['tenant'])}; "
                  "keep it now, it is not shown again:", highlight=False)
    print(created["api_key"])


@tenants_app.command("revoke-key")
def tenants_revoke_key(key_id: str) -> None:
    """Revoke a key: every gateway refuses it once it has read the revocation."""
    from urllib.parse import quote

    revoked = admin_request("DELETE", f"/keys/{quote(key_id, safe='')}")
    console.print(f"[green]✓[/] key {revoked['key_id']} of tenant {escape(revoked['tenant'])} revoked "
                  f"at {revoked['revoked_at']}", highlight=False)


@tenants_app.command("list")
def tenants_list() -> None:
    """Every tenant's keys (ids and dates; never a secret)."""
    table = Table("tenant", "key id", "created", "revoked", title="API keys")
    for key in admin_request("GET", "/keys")["keys"]:
        table.add_row(escape(key["tenant"]), key["key_id"], key["created_at"], key["revoked_at"] or "-")
    console.print(table)


replay_app = typer.Typer(help="Rebuild from the log.", no_args_is_help=True)
app.add_typer(replay_app, name="replay")


@replay_app.command("events")
def replay_events(
    since: Annotated[Optional[datetime], typer.Option(help="Replay from the first event at or after this time (UTC "
                                                           "unless it says); default: the whole log.")] = None,
) -> None:
    """Insert herald.events and herald.dlq into ClickHouse again; idempotent (counts after equal counts before)."""
    from tooling.replay import replay_events as replay

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    with console.status("replaying…") as status:
        done = replay(get_settings(), since, status.update)
    console.print(f"[green]✓[/] replayed {done.messages:,} messages: {done.rows:,} rows inserted (they collapse with "
                  f"the rows already there), {done.refused:,} refused by ClickHouse, {done.unconvertible:,} not convertible; "
                  f"dashboard rollups recomputed for {len(done.rollup_days)} day(s)")


@replay_app.command("rollups")
def replay_rollups(
    since: Annotated[Optional[datetime], typer.Option(help="Recompute the days with events from this time on (UTC "
                                                           "unless it says); default: every day.")] = None,
) -> None:
    """Recompute the dashboard's per-minute rollups from the stored events (with FINAL): after a stage
    processed messages again (its repeated events collapse in notification_events, the views counted them)."""
    from sinks.clickhouse_client import connect
    from sinks.rollups import rebuild

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    client = connect(get_settings())
    try:
        days = rebuild(client, since)
    finally:
        client.disconnect()
    console.print(f"[green]✓[/] rollups recomputed for {len(days)} day(s): {', '.join(map(str, days)) or 'none'}")


@replay_app.command("dlq")
def replay_dlq(
    reason: Annotated[str, typer.Option(help="The reason code to send back, e.g. unknown_template, retries_exhausted.")],
    stage: Annotated[Optional[str], typer.Option(help="Only what this stage refused or could not process.")] = None,
) -> None:
    """Send dead letters and rejections with this reason back where they came from, each at most once."""
    from tooling.replay import replay_refused

    with console.status("sending back…") as status:
        sent = replay_refused(get_settings(), reason, stage, status.update)
    where = ", ".join(f"{count:,} to {topic}" for topic, count in sent.items()) or "nothing (none left with that reason)"
    console.print(f"[green]✓[/] sent back: {where}")


@app.command("web-push-subscription")
def web_push_subscription(
    subscriber: Annotated[str, typer.Argument(help="An id for the browser (any string).")],
) -> None:
    """A push token for a browser subscribed at the local web push service (the peers); for `prefs set --push-token`."""
    import httpx

    settings = get_settings()
    response = httpx.get(f"http://{settings.peers_host}:{settings.peers_port}/push/_subscribe",
                         params={"id": subscriber}, timeout=10)
    response.raise_for_status()
    print(response.json()["token"])


@app.command()
def demo(
    batches: Annotated[list[Path], typer.Argument(exists=True, help="JSON NotificationBatch files to send.")],
    wait: Annotated[float, typer.Option(help="Seconds to wait at most for the batches' events in ClickHouse.")] = 60,
    scheduled: Annotated[Optional[Path], typer.Option(
        exists=True, help="JSON NotificationRequest to send with a send_at --scheduled-in seconds ahead.")] = None,
    scheduled_in: Annotated[float, typer.Option(help="How far ahead the scheduled one goes, in seconds.")] = 5,
) -> None:
    """Send batches (and one scheduled notification) through the gateway, wait for them to play out
    (and for the digests they make), and show where everything is."""
    import time
    from datetime import datetime, timedelta, timezone

    import httpx

    settings = get_settings()
    gateway_url = f"http://{settings.gateway_host}:{settings.gateway_port}"
    headers = {"X-API-Key": settings.api_key, "Content-Type": "application/json"}
    time.sleep(2)  # the stages fold the templates and preferences just published
    ids = []
    for batch in batches:
        response = httpx.post(f"{gateway_url}/v1/notifications/batch", content=batch.read_bytes(), headers=headers, timeout=10)
        response.raise_for_status()
        accepted = response.json()["notification_ids"]
        console.print(f"[green]✓[/] batch {batch.name} accepted: {len(accepted)} notifications")
        ids += accepted
    if scheduled is not None:
        send_at = datetime.now(timezone.utc) + timedelta(seconds=scheduled_in)
        body = {**json.loads(scheduled.read_text()), "send_at": send_at.isoformat(),
                "idempotency_key": f"demo-scheduled-{send_at:%Y%m%dT%H%M%S.%f}"}
        response = httpx.post(f"{gateway_url}/v1/notifications", json=body, headers=headers, timeout=10)
        response.raise_for_status()
        held = response.json()["notification_id"]
        console.print(f"[green]✓[/] {scheduled.name} accepted, to go at {send_at:%H:%M:%S} UTC ({scheduled_in:g} s from now)")
        print(f"scheduled   herald status {held}")  # plain: a command to copy, never wrapped
        ids.append(held)
    with console.status(f"waiting (up to {wait:.0f} s) for the batches' lifecycle events in ClickHouse…"):
        pending = wait_settled(ids, wait)
        gathered = digest_ids(ids)
    if gathered:
        with console.status(f"waiting (up to {wait:.0f} s) for {len(gathered)} digest(s) to close and go out…"):
            pending += wait_settled(gathered, wait)
        console.print(f"[green]✓[/] notifications gathered into {len(gathered)} digest(s)")
        print(f"digest      herald status {gathered[0]}")  # plain: a command to copy, never wrapped
        ids += gathered
    if pending:
        console.print(f"[yellow]![/] {len(pending)} of {len(ids)} notifications not at a final status yet "
                      f"(e.g. herald status {pending[0]}); the report shows what arrived")
    else:
        console.print(f"[green]✓[/] all {len(ids)} notifications at a final status")
    show_landings(settings, ids, gateway_url)
    report(minutes=60)


@app.command("state-size")
def state_size(
    users: Annotated[int, typer.Option(help="How many users to fill the tables with.")] = 100_000,
) -> None:
    """Memory per user of route's and digest's per-user state (frequency caps, open digest windows) and
    of the preference table."""
    from tooling.state_size import digest_state_bytes, preference_bytes, route_state_bytes

    settings = get_settings()
    memory, changelog = route_state_bytes(settings, users)
    preferences = preference_bytes(settings, users)
    console.print(f"{users:,} users, route's cap state (3 sends on 2 channels each): {memory / 2**20:.0f} MB in memory "
                  f"({memory / users:.0f} B a user), {changelog / 2**20:.0f} MB of changelog values; "
                  f"held by the worker of each user's partition only")
    windows, window_changelog = digest_state_bytes(settings, users)
    console.print(f"{users:,} users, digest's open windows (one of 10 comments each): {windows / 2**20:.0f} MB in memory "
                  f"({windows / users:.0f} B a user), {window_changelog / 2**20:.0f} MB of changelog values; held "
                  f"by the worker of each user's partition only, and only while a window is open")
    console.print(f"{users:,} users' preferences (folded whole by route and the gateway): {preferences / 2**20:.0f} MB "
                  f"({preferences / users:.0f} B a user)")


@app.command()
def bench(
    notifications: Annotated[int, typer.Option(help="How many notifications.")] = 10_000,
    rate: Annotated[Optional[float], typer.Option(help="Requests per second; default: as fast as possible.")] = None,
    channels: Annotated[list[str], typer.Option(
        help="Channels each request asks for: comma-separated or repeated (email, sms, push, chat, in_app).")] = ["email"],
    idle_timeout: Annotated[float, typer.Option(help="Give up after this many seconds without a delivery.")] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the benchmark's JSON line (see README.md, Benchmark).")] = False,
) -> None:
    """Drive N notifications through the running pipeline to the local providers and measure, per channel."""
    import asyncio

    from tooling.bench import parse_channels, run_bench

    try:
        channels = parse_channels(channels)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--channels") from None
    settings = get_settings()
    if as_json:
        result = asyncio.run(run_bench(settings, notifications, rate, channels, idle_timeout))
        print(json.dumps(result))
        return
    with console.status("benchmarking…") as status:
        result = asyncio.run(run_bench(settings, notifications, rate, channels, idle_timeout,
                                       lambda done, n: status.update(f"delivered {done:,} of {n:,}")))
    console.print_json(json.dumps(result))


if __name__ == "__main__":
    app()
