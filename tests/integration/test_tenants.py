"""Tenant isolation end to end (issue #9): tenant A's key cannot read tenant B's notification status,
templates or preferences (through the API, or by sending with them), and cannot send as B; a
revoked key is refused.

On a private stack (tests/stack.py) with an admin key: the keys are made and revoked with
`herald tenants`, the templates and preferences with `herald templates put` and `herald prefs set`,
as an operator would. Both tenants have a template `receipt` and a user `alice`, each their own.
"""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sinks.clickhouse_client import connect
from streams.settings import REPO_ROOT, Settings
from tests.integration.pipeline_helpers import Mail, wait_for_statuses
from tests.stack import private_stack, require_stack_tools
from tooling.local import mailbox_dir, up
from tooling.mailbox import read_receipts

ADMIN_KEY = "tenants-test-admin-key"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    require_stack_tools()
    data_dir = tmp_path_factory.mktemp("tenants") / "herald"
    with private_stack(data_dir, {"HERALD_ADMIN_API_KEY": ADMIN_KEY}) as settings:
        up(settings, lambda line: None)
        yield settings


def herald(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tooling.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def receipt_template(tenant: str, template_id: str, subject: str) -> dict:
    return {"template_id": template_id, "tenant": tenant, "version": 1, "locale": "en", "variables": ["order"],
            "parts": [{"channel": "email", "subject": subject + " {{ order }}", "text": "Order {{ order }}."}],
            "updated_at": "2026-11-25T12:00:00Z"}


def send(settings: Settings, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"http://{settings.gateway_host}:{settings.gateway_port}/v1/notifications", json=body,
                      headers={"X-API-Key": key}, timeout=10)


def get(settings: Settings, key: str, path: str) -> httpx.Response:
    return httpx.get(f"http://{settings.gateway_host}:{settings.gateway_port}{path}", headers={"X-API-Key": key},
                     timeout=10)


def status(settings: Settings, key: str, notification_id: str, method: str = "GET") -> int:
    url = f"http://{settings.gateway_host}:{settings.gateway_port}/v1/notifications/{notification_id}"
    return httpx.request(method, url, headers={"X-API-Key": key}, timeout=10).status_code


def test_one_tenants_key_cannot_read_or_use_anothers_and_a_revoked_key_is_refused(
    stack: Settings, tmp_path: Path
) -> None:
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps([receipt_template("acme", "receipt", "Acme receipt"),
                                     receipt_template("globex", "receipt", "Globex receipt"),
                                     receipt_template("globex", "globex-only", "Globex only")]))
    herald("templates", "put", str(templates))
    herald("prefs", "set", "alice", "--tenant", "acme", "--email", "alice@acme.example")
    herald("prefs", "set", "alice", "--tenant", "globex", "--email", "alice@globex.example")
    herald("prefs", "set", "bob", "--tenant", "globex", "--email", "bob@globex.example")
    acme = herald("tenants", "create-key", "acme").strip()
    globex = herald("tenants", "create-key", "globex").strip()
    assert acme.startswith("hk_") and globex.startswith("hk_") and acme != globex
    time.sleep(3)  # the stages fold herald.templates and herald.preferences as they arrive

    order = {"template_id": "receipt", "idempotency_key": "order-1", "recipient": {"user_id": "alice"},
             "variables": {"order": "1"}}
    sent = {tenant: send(stack, key, order) for tenant, key in (("acme", acme), ("globex", globex))}
    assert {r.status_code for r in sent.values()} == {202}
    ids = {tenant: r.json()["notification_id"] for tenant, r in sent.items()}
    assert ids["acme"] != ids["globex"], "one idempotency key in two tenants is two notifications"

    # Acme cannot send as globex, nor render globex's template, nor reach globex's users' contacts.
    as_globex = send(stack, acme, order | {"tenant": "globex", "idempotency_key": "order-2"})
    assert as_globex.status_code == 403 and as_globex.json()["detail"][0]["field"] == "tenant"
    their_template = send(stack, acme, order | {"template_id": "globex-only", "idempotency_key": "order-3"})
    their_user = send(stack, acme, order | {"recipient": {"user_id": "bob"}, "idempotency_key": "order-4"})
    assert their_template.status_code == their_user.status_code == 202
    template_id, user_id = their_template.json()["notification_id"], their_user.json()["notification_id"]

    # Each alice got her own tenant's email: the template and the address are the tenant's.
    received = Mail(stack, list(ids.values())).wait_for_all(timeout=120)
    assert set(received) == set(ids.values()) and set(received.values()) == {1}
    mail = {r.notification_id: r for r in read_receipts(mailbox_dir(stack)) if r.notification_id in ids.values()}
    assert (mail[ids["acme"]].to, mail[ids["acme"]].subject) == (["alice@acme.example"], "Acme receipt 1")
    assert (mail[ids["globex"]].to, mail[ids["globex"]].subject) == (["alice@globex.example"], "Globex receipt 1")

    clickhouse = connect(stack)
    found = wait_for_statuses(clickhouse, "acme", [template_id], {"rejected"}, timeout=60)
    assert "rejected" in found[template_id], found.get(template_id)
    found = wait_for_statuses(clickhouse, "acme", [user_id], {"suppressed"}, timeout=60)
    assert "suppressed" in found[user_id] and "sent" not in found[user_id], found.get(user_id)
    assert not any("bob@globex.example" in r.to for r in read_receipts(mailbox_dir(stack)))

    # The HTTP API shows each tenant its own templates and preferences, never the other's.
    listed = {t: {(x["template_id"], tuple(x["versions"])) for x in get(stack, key, "/v1/templates").json()["templates"]}
              for t, key in (("acme", acme), ("globex", globex))}
    assert listed == {"acme": {("receipt", (1,))}, "globex": {("receipt", (1,)), ("globex-only", (1,))}}
    assert get(stack, acme, "/v1/templates/globex-only/versions/1").status_code == 404
    assert get(stack, acme, "/v1/templates/receipt/versions/1").json()["parts"][0]["subject"] == "Acme receipt {{ order }}"
    assert get(stack, acme, "/v1/preferences/alice").json()["email"] == "alice@acme.example"
    assert get(stack, globex, "/v1/preferences/alice").json()["email"] == "alice@globex.example"
    assert get(stack, acme, "/v1/preferences/bob").status_code == 404

    # Status: each tenant reads its own notifications only; acme cannot cancel globex's.
    wait_for_statuses(clickhouse, "globex", [ids["globex"]], {"sent"}, timeout=60)
    assert status(stack, acme, ids["acme"]) == 200 and status(stack, globex, ids["globex"]) == 200
    assert status(stack, acme, ids["globex"]) == 404 and status(stack, globex, ids["acme"]) == 404
    assert status(stack, stack.api_key, ids["acme"]) == 404  # the default tenant's key is no master key
    assert status(stack, acme, ids["globex"], "DELETE") == 404

    # A revoked key is refused at once; the other tenant's key still works.
    listed = herald("tenants", "list")
    assert "acme" in listed and "globex" in listed
    key_id = acme.removeprefix("hk_").split("_", 1)[0]
    herald("tenants", "revoke-key", key_id)
    refused = send(stack, acme, order | {"idempotency_key": "order-5"})
    assert refused.status_code == 401
    assert status(stack, acme, ids["acme"]) == 401
    assert send(stack, globex, order | {"idempotency_key": "order-5"}).status_code == 202
