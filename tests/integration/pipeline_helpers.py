"""What the end-to-end tests do to the running pipeline and read back from it."""

import io
import json
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import fastavro
import httpx
from clickhouse_driver import Client
from kafka import KafkaAdminClient, KafkaProducer

from gateway.auth import new_key
from schemas.models import PreferencesUpdated, TemplateUpserted
from streams.ids import notification_id
from tooling.local import mailbox_dir
from tooling.mailbox import read_receipts
from tooling.producer import publish
from streams.settings import REPO_ROOT, Settings
from streams.tables import preference_key, template_key
from streams.topics import PREFERENCES, REQUESTS, TEMPLATES, TENANTS

REQUEST_SCHEMA_JSON = json.loads((REPO_ROOT / "schemas/NotificationRequest.avsc").read_text())
REQUEST_SCHEMA = fastavro.parse_schema(REQUEST_SCHEMA_JSON)


def foreign_encode(record: dict[str, Any]) -> bytes:
    """Single-object encoding as any producer would write it with fastavro and the .avsc alone."""
    canonical = fastavro.schema.to_parsing_canonical_form(REQUEST_SCHEMA_JSON)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))  # wire order
    body = io.BytesIO()
    fastavro.schemaless_writer(body, REQUEST_SCHEMA, record)
    return b"\xc3\x01" + fingerprint + body.getvalue()


def put_template(template_id: str, variables: list[str], subject: str, text: str, html: str | None = None,
                 **fields: Any) -> None:
    """An email template; `fields`: more TemplateUpserted fields (frequency_caps, critical…)."""
    template = TemplateUpserted.model_validate({
        "template_id": template_id, "version": 1, "locale": "en", "variables": variables,
        "parts": [{"channel": "email", "subject": subject, "text": text, "html": html}],
        "updated_at": datetime.now(timezone.utc), **fields,
    })
    publish(TEMPLATES, [(template_key(template.tenant, template_id, "en", 1), template)])


def set_preferences(tenant: str, user_id: str, email: str, opt_outs: list[dict[str, str]] | None = None,
                    **fields: Any) -> None:
    """`fields`: more PreferencesUpdated fields (quiet_hours, time_zone…)."""
    preferences = PreferencesUpdated.model_validate({
        "user_id": user_id, "tenant": tenant, "email": email, "opt_outs": opt_outs or [],
        "updated_at": datetime.now(timezone.utc), **fields,
    })
    publish(PREFERENCES, [(preference_key(tenant, user_id), preferences)])


def request(tenant: str, key: str, template_id: str, user_id: str, email: str | None,
            variables: dict[str, str]) -> dict[str, Any]:
    return {
        "tenant": tenant, "idempotency_key": key, "template_id": template_id, "template_version": None,
        "recipient": {"user_id": user_id, "email": email, "phone": None, "push_tokens": [], "locale": None,
                      "time_zone": None},
        "variables": variables, "channels": ["email"], "category": "transactional", "priority": "normal",
        "send_at": None, "expires_at": None, "fallback_channel": None, "requested_at": datetime.now(timezone.utc),
        "metadata": {},
    }


def produce(producer: KafkaProducer, requests: list[dict[str, Any]]) -> list[str]:
    """Produce requests as a user's service would; the ids ingest will stamp on them."""
    for r in requests:
        producer.send(REQUESTS.name, key=r["idempotency_key"].encode(), value=foreign_encode(r))
    producer.flush()
    return [str(notification_id(r["tenant"], r["idempotency_key"], "")) for r in requests]


def tenant_key(settings: Settings, tenant: str, timeout: float = 60) -> str:
    """A new API key of `tenant`, published to herald.tenants as an operator with Kafka access could
    (`herald tenants create-key` goes through the gateway's admin key instead); returns once the
    gateway accepts it."""
    key, record = new_key(tenant, datetime.now(timezone.utc))
    publish(TENANTS, [(record.key_id.encode(), record)])
    url = f"http://{settings.gateway_host}:{settings.gateway_port}/v1/notifications/{uuid.uuid4()}"
    deadline = time.monotonic() + timeout
    while httpx.get(url, headers={"X-API-Key": key}, timeout=10).status_code in (401, 503):
        assert time.monotonic() < deadline, f"the gateway did not take the key of {tenant} within {timeout} s"
        time.sleep(0.5)
    return key


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


class Mail:
    """What the mailbox (the local SMTP provider) received for a set of notifications."""

    def __init__(self, settings: Settings, ids: list[str]) -> None:
        self.directory: Path = mailbox_dir(settings)
        self.ids = set(ids)

    def submissions(self) -> Counter[str]:
        return Counter(r.notification_id for r in read_receipts(self.directory) if r.notification_id in self.ids)

    def tally(self) -> tuple[Counter[str], Counter[str]]:
        """Per notification: the submissions the mailbox stored, and the repeats it recognised by
        Message-ID and acknowledged without storing (resends absorbed by the idempotency key)."""
        stored: Counter[str] = Counter()
        repeats: Counter[str] = Counter()
        for receipt in read_receipts(self.directory):
            if receipt.notification_id in self.ids:
                (repeats if receipt.duplicate else stored)[receipt.notification_id] += 1
        return stored, repeats

    def wait_for_all(self, timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        received = self.submissions()
        while len(received) < len(self.ids) and time.monotonic() < deadline:
            time.sleep(1)
            received = self.submissions()
        return received

    def message(self, notification_id: str, domain: str) -> EmailMessage:
        raw = (self.directory / "messages" / f"{notification_id}@{domain}.eml").read_bytes()
        return message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]

    def stored(self, domain: str) -> int:
        return sum((self.directory / "messages" / f"{i}@{domain}.eml").exists() for i in self.ids)


def group_sizes(kafka: str, groups: list[str]) -> dict[str, int]:
    """Members of each consumer group."""
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        return {group: len(found["members"]) for group, found in admin.describe_groups(groups).items()}
    finally:
        admin.close()


def statuses(clickhouse: Client, tenant: str) -> dict[str, set[str]]:
    rows = clickhouse.execute(
        "SELECT toString(notification_id), groupUniqArray(status) FROM notification_events FINAL "
        "WHERE tenant = %(tenant)s GROUP BY notification_id", {"tenant": tenant})
    return {nid: set(found) for nid, found in rows}


def wait_for_statuses(clickhouse: Client, tenant: str, ids: list[str], wanted: set[str],
                      timeout: float) -> dict[str, set[str]]:
    deadline = time.monotonic() + timeout
    while True:
        found = statuses(clickhouse, tenant)
        if all(wanted <= found.get(i, set()) for i in ids) or time.monotonic() > deadline:
            return found
        time.sleep(1)


def events_with(clickhouse: Client, tenant: str, status: str) -> dict[str, tuple[str, str]]:
    rows = clickhouse.execute(
        "SELECT toString(notification_id), error_code, detail FROM notification_events FINAL "
        "WHERE tenant = %(tenant)s AND status = %(status)s", {"tenant": tenant, "status": status})
    return {nid: (code, detail) for nid, code, detail in rows}
