"""streams/tables.py: folding herald.templates and herald.preferences, and finding a template.

The tables are mode Services; constructing one does not connect, and `fold` is the pure step.
"""

import time
import uuid
from datetime import datetime, timedelta

import pytest

from streams.codec import default_serde
from streams.settings import Settings
from streams.tables import (CancellationTable, PreferenceTable, StateTable, TemplateTable, cancellation_key,
                            preference_key, template_key, template_key_parts, tenant_key, tenant_key_parts)
from streams.topics import CONTACTS_REMOVED, IDEMPOTENCY_KEYS
from tests.unit import records


def upsert(table: TemplateTable, template_id: str = "welcome", version: int = 1, locale: str = "en",
           **fields: object) -> dict:
    record = records.template(template_id, version, locale, **fields)
    table.fold(template_key(record["tenant"], template_id, locale, version), record)
    return record


@pytest.fixture
def templates() -> TemplateTable:
    return TemplateTable(Settings())


@pytest.fixture
def preferences() -> PreferenceTable:
    return PreferenceTable(Settings())


# --- keys ------------------------------------------------------------------------------------------------


def test_template_key_round_trips() -> None:
    assert template_key("default", "welcome", "pt-BR", 3) == b"welcome/pt-BR/3"  # as before tenants
    assert template_key("acme", "welcome", "pt-BR", 3) == b"@acme/welcome/pt-BR/3"
    assert template_key_parts(b"welcome/pt-BR/3") == ("default", "welcome", "pt-BR", 3)
    assert template_key_parts(b"@acme/welcome/pt-BR/3") == ("acme", "welcome", "pt-BR", 3)


def test_template_key_parts_keeps_slashes_in_the_id() -> None:
    for tenant in ("default", "acme"):
        assert template_key_parts(template_key(tenant, "billing/invoice", "en", 12)) == \
            (tenant, "billing/invoice", "en", 12)


@pytest.mark.parametrize(("tenant", "rest"), [
    ("default", "alice"), ("default", "@acme/alice"), ("acme", "alice"), ("acme", "@acme/alice"),
    ("default", "@x"), ("globex", "a/b/c"),
])
def test_keys_under_a_tenant_are_one_to_one(tenant: str, rest: str) -> None:
    """No two (tenant, id) share a key: the default tenant's '@acme/alice' is not acme's 'alice'."""
    key = tenant_key(tenant, rest)
    assert tenant_key_parts(key) == (tenant, rest)
    others = {tenant_key(t, r) for t in ("default", "acme", "globex") for r in ("alice", "@acme/alice", "a/b/c")
              if (t, r) != (tenant, rest)}
    assert key not in others


@pytest.mark.parametrize("tenant", ["", "a/b", "@acme", "ténant", "x" * 129, "a b"])
def test_a_tenant_name_a_key_cannot_hold_is_refused(tenant: str) -> None:
    with pytest.raises(ValueError):
        preference_key(tenant, "alice")


# --- TemplateTable ---------------------------------------------------------------------------------------


def test_find_unknown_template(templates: TemplateTable) -> None:
    assert templates.find("default", "nope") is None
    assert len(templates) == 0


def test_find_latest_version(templates: TemplateTable) -> None:
    upsert(templates, version=1)
    latest = upsert(templates, version=3)
    upsert(templates, version=2)
    assert templates.find("default", "welcome") is latest
    assert templates.find("default", "welcome", "en") is latest
    assert len(templates) == 1


def test_find_a_specific_version(templates: TemplateTable) -> None:
    first = upsert(templates, version=1)
    upsert(templates, version=2)
    assert templates.find("default", "welcome", "en", 1) is first
    assert templates.find("default", "welcome", "en", 7) is None


def test_an_upsert_of_the_same_version_replaces_it(templates: TemplateTable) -> None:
    upsert(templates, version=1, category="transactional")
    again = upsert(templates, version=1, category="marketing")
    assert templates.find("default", "welcome") is again


@pytest.mark.parametrize(("locale", "expected"), [
    ("pt-BR", "pt-BR"),  # exact
    ("pt-PT", "pt"),  # its language
    ("pt", "pt"),
    ("de-AT", "en"),  # neither: English
    (None, "en"),
])
def test_locale_fallback(templates: TemplateTable, locale: str | None, expected: str) -> None:
    for available in ("en", "pt", "pt-BR"):
        upsert(templates, locale=available)
    assert templates.find("default", "welcome", locale)["locale"] == expected


def test_locale_falls_back_to_any_without_english(templates: TemplateTable) -> None:
    upsert(templates, locale="fr")
    assert templates.find("default", "welcome", "de")["locale"] == "fr"
    assert templates.find("default", "welcome")["locale"] == "fr"


def test_each_locale_has_its_own_latest_version(templates: TemplateTable) -> None:
    upsert(templates, locale="en", version=5)
    upsert(templates, locale="pt", version=2)
    assert templates.find("default", "welcome", "pt-BR")["version"] == 2
    assert templates.find("default", "welcome", "en")["version"] == 5


def test_templates_do_not_mix(templates: TemplateTable) -> None:
    upsert(templates, "welcome", version=1)
    other = upsert(templates, "reset", version=9)
    assert templates.find("default", "reset") is other
    assert templates.find("default", "welcome")["version"] == 1
    assert len(templates) == 2


def test_a_deleted_version_is_gone(templates: TemplateTable) -> None:
    upsert(templates, version=1)
    upsert(templates, version=2)
    upsert(templates, version=2, deleted=True)
    assert templates.find("default", "welcome", "en", 2) is None
    assert templates.find("default", "welcome")["version"] == 1


def test_a_tombstone_removes_the_version_of_its_key(templates: TemplateTable) -> None:
    upsert(templates, version=1)
    upsert(templates, version=2)
    templates.fold(template_key("default", "welcome", "en", 2), None)
    assert templates.find("default", "welcome")["version"] == 1
    templates.fold(template_key("default", "welcome", "en", 1), None)
    assert templates.find("default", "welcome") is None


def test_deleting_the_last_version_of_a_locale_falls_back(templates: TemplateTable) -> None:
    upsert(templates, locale="en", version=1)
    upsert(templates, locale="pt", version=1)
    templates.fold(template_key("default", "welcome", "pt", 1), None)
    assert templates.find("default", "welcome", "pt-BR")["locale"] == "en"


def test_deleting_what_is_not_there_is_harmless(templates: TemplateTable) -> None:
    templates.fold(template_key("default", "ghost", "en", 1), None)
    upsert(templates, version=1)
    templates.fold(template_key("default", "welcome", "pt", 1), None)
    templates.fold(template_key("default", "welcome", "en", 4), None)
    assert templates.find("default", "ghost") is None
    assert templates.find("default", "welcome")["version"] == 1


def test_for_notification_uses_the_recipient_locale_then_preferences(templates: TemplateTable) -> None:
    upsert(templates, locale="en")
    upsert(templates, locale="fr")
    upsert(templates, locale="de")
    french = records.notification(recipient=records.recipient(locale="fr-CA"), template_version=None)
    assert templates.for_notification(french, records.preferences(locale="de"))["locale"] == "fr"
    unknown = records.notification(recipient=records.recipient(locale=None), template_version=None)
    assert templates.for_notification(unknown, records.preferences(locale="de"))["locale"] == "de"
    assert templates.for_notification(unknown, None)["locale"] == "en"


def test_for_notification_uses_the_requested_version(templates: TemplateTable) -> None:
    upsert(templates, version=1)
    upsert(templates, version=2)
    assert templates.for_notification(records.notification(template_version=1), None)["version"] == 1
    assert templates.for_notification(records.notification(template_version=None), None)["version"] == 2
    assert templates.for_notification(records.notification(template_version=3), None) is None
    assert templates.for_notification(records.notification(template_id="other"), None) is None


def test_a_tenant_renders_its_own_templates_then_the_shared_ones_never_another_tenants(templates: TemplateTable) -> None:
    shared = upsert(templates, "welcome", text="shared")
    acme = upsert(templates, "welcome", tenant="acme")
    secret = upsert(templates, "invoice", tenant="globex")

    def rendered_with(tenant: str, template_id: str = "welcome") -> dict | None:
        return templates.for_notification(records.notification(tenant=tenant, template_id=template_id,
                                                               template_version=None), None)

    assert templates.find("acme", "welcome") is acme and templates.find("default", "welcome") is shared
    assert rendered_with("acme") is acme
    assert rendered_with("initech") is shared
    assert rendered_with("globex", "invoice") is secret
    assert rendered_with("acme", "invoice") is None
    assert rendered_with("default", "invoice") is None


def test_a_tenants_tombstone_removes_only_its_version(templates: TemplateTable) -> None:
    shared = upsert(templates, "welcome")
    upsert(templates, "welcome", tenant="acme")
    templates.fold(template_key("acme", "welcome", "en", 1), None)
    assert templates.find("acme", "welcome") is None
    assert templates.find("default", "welcome") is shared


# --- PreferenceTable -------------------------------------------------------------------------------------


def test_preferences_fold_and_get(preferences: PreferenceTable) -> None:
    alice = records.preferences("alice", email="alice@example.com")
    preferences.fold(preference_key("acme", "alice"), alice)
    assert preferences.get("acme", "alice") is alice
    assert preferences.get("acme", "bob") is None
    assert len(preferences) == 1


def test_preferences_latest_record_wins_whole(preferences: PreferenceTable) -> None:
    preferences.fold(preference_key("acme", "alice"), records.preferences("alice", email="old@example.com", phone="+15550000001"))
    latest = records.preferences("alice", email="new@example.com")
    preferences.fold(preference_key("acme", "alice"), latest)
    assert preferences.get("acme", "alice") == latest
    assert preferences.get("acme", "alice")["phone"] is None  # not merged with the earlier record


def test_preferences_tombstone_forgets_the_user(preferences: PreferenceTable) -> None:
    preferences.fold(preference_key("acme", "alice"), records.preferences("alice"))
    preferences.fold(preference_key("acme", "bob"), records.preferences("bob"))
    preferences.fold(preference_key("acme", "alice"), None)
    assert preferences.get("acme", "alice") is None
    assert preferences.get("acme", "bob") is not None
    preferences.fold(preference_key("acme", "nobody"), None)
    assert len(preferences) == 1


def test_apply_decodes_and_skips_undecodable(preferences: PreferenceTable) -> None:
    record = records.preferences("carol", email="carol@example.com")
    preferences.apply(preference_key("acme", "carol"), default_serde().encode("PreferencesUpdated", record))
    assert preferences.get("acme", "carol") == record
    preferences.apply(preference_key("acme", "dave"), b"\xc3\x01garbage")
    assert preferences.get("acme", "dave") is None
    preferences.apply(preference_key("acme", "carol"), None)
    assert preferences.get("acme", "carol") is None


def test_the_same_user_id_in_two_tenants_is_two_users(preferences: PreferenceTable) -> None:
    acme = records.preferences("alice", tenant="acme", email="alice@acme.example")
    globex = records.preferences("alice", tenant="globex", email="alice@globex.example")
    preferences.fold(preference_key("acme", "alice"), acme)
    preferences.fold(preference_key("globex", "alice"), globex)
    assert preferences.get("acme", "alice") is acme and preferences.get("globex", "alice") is globex
    assert preferences.get("default", "alice") is None
    preferences.fold(preference_key("globex", "alice"), None)
    assert preferences.get("acme", "alice") is acme and preferences.get("globex", "alice") is None


def test_a_bare_key_written_before_tenants_is_the_default_tenants(preferences: PreferenceTable) -> None:
    preferences.fold(b"bob", records.preferences("bob", tenant="default"))
    assert preferences.get("default", "bob") is not None
    preferences.fold(b"bob", None)
    assert preferences.get("default", "bob") is None


def test_a_cancellation_counts_only_for_the_tenant_that_made_it() -> None:
    table = CancellationTable(Settings())
    nid = uuid.uuid4()
    table.fold(cancellation_key("globex", nid), {"notification_id": nid, "tenant": "globex"})
    assert not table.cancels({"notification_id": nid, "tenant": "acme"})
    table.fold(cancellation_key("acme", nid), {"notification_id": nid, "tenant": "acme"})
    assert table.cancels({"notification_id": nid, "tenant": "acme"})
    assert len({cancellation_key(t, nid) for t in ("default", "acme", "globex")}) == 3  # none replaces another
    assert cancellation_key("default", nid) == nid.bytes  # as before tenants
    table.fold(cancellation_key("acme", nid), None)
    assert not table.cancels({"notification_id": nid, "tenant": "acme"}) and len(table) == 1
    table.fold(nid.bytes, {"notification_id": nid, "tenant": "default"})
    table.fold(nid.bytes, None)
    assert len(table) == 1


# --- StateTable: blocks, TTL while folding, malformed entries ---------------------------------------------


def state_table(ttl_s: float = 3600) -> StateTable:
    return StateTable(Settings(), IDEMPOTENCY_KEYS, ttl_s, producer=lambda: None)  # type: ignore[arg-type,return-value]


def test_state_blocks_fold_and_a_tombstone_forgets_only_its_own_entries() -> None:
    table = state_table()
    now = time.time()
    table.fold(b"b1", {"at": now, "entries": {"k1": "p1", "k2": "p2"}})
    table.fold(b"b2", {"at": now, "entries": {"k2": "p3"}})
    assert (table.get("k1"), table.get("k2"), len(table)) == ("p1", "p3", 2)
    table.fold(b"b1", None)
    assert (table.get("k1"), table.get("k2")) == (None, "p3")


def test_a_block_past_its_ttl_is_never_held_and_is_tombstoned_by_the_next_purge() -> None:
    table = state_table(ttl_s=60)
    table.fold(b"old", {"at": time.time() - 61, "entries": {"k": "v"}})
    assert table.get("k") is None and len(table) == 0
    assert table.expired == {"old"}


@pytest.mark.parametrize("record", [[1, 2], {"at": "x", "entries": {}}, {"entries": {}}, {"at": 1, "entries": 5}, "s"])
def test_a_malformed_block_is_skipped_not_fatal(record: object) -> None:
    table = state_table()
    table.fold(b"bad", record)
    assert len(table) == 0


def test_encoded_blocks_split_and_fold_back() -> None:
    table = state_table()
    writes = {f"k{i}": i for i in range(StateTable.BLOCK_ENTRIES + 5)}
    records = table.encode("herald.requests/0/7", writes)
    assert [key for key, _ in records] == [b"herald.requests/0/7", b"herald.requests/0/7#1"]
    for key, value in records:
        table.fold(key, table.decode(value))
    assert len(table) == len(writes) and table.get("k0") == 0


def test_a_new_block_never_forgets_the_entries_of_another() -> None:
    table = state_table()
    now = time.time()
    table.fold(b"herald.deliver.email/0/5~a", {"at": now, "entries": {"n1/email": True, "n2/email": True}})
    table.fold(b"herald.deliver.email/0/5~b", {"at": now, "entries": {"n3/email": True}})  # the replay's
    assert [table.get(k) for k in ("n1/email", "n2/email", "n3/email")] == [True, True, True]


def removal(user_id: str, channel: str, address: str, at: datetime) -> bytes:
    return default_serde().encode("ContactRemoved", {
        "tenant": "acme", "user_id": user_id, "channel": channel, "address": address, "provider": "apns",
        "reason_code": "apns_Unregistered", "detail": None, "notification_id": uuid.UUID(int=1), "removed_at": at})


def test_a_contact_removed_after_the_preferences_is_dead(preferences: PreferenceTable) -> None:
    preferences.fold(preference_key("acme", "erin"), records.preferences("erin", push_tokens=["apns:aa", "apns:bb"]))
    later = records.UPDATED_AT + timedelta(days=1)
    preferences.apply(preference_key("acme", "k"), removal("erin", "push", "apns:aa", later), CONTACTS_REMOVED.name)
    assert preferences.dead("acme", "erin") == {("push", "apns:aa")}
    assert preferences.dead("acme", "frank") == set()


def test_preferences_updated_after_a_removal_bring_the_contact_back(preferences: PreferenceTable) -> None:
    later = records.UPDATED_AT + timedelta(days=1)
    preferences.apply(preference_key("acme", "k"), removal("erin", "sms", "+15550001111", later), CONTACTS_REMOVED.name)
    assert preferences.dead("acme", "erin") == {("sms", "+15550001111")}  # no preferences at all: dead
    preferences.fold(preference_key("acme", "erin"), records.preferences("erin", phone="+15550001111", updated_at=later + timedelta(seconds=1)))
    assert preferences.dead("acme", "erin") == set()


def test_an_undecodable_removal_is_skipped(preferences: PreferenceTable) -> None:
    preferences.apply(preference_key("acme", "k"), b"\xc3\x01garbage", CONTACTS_REMOVED.name)
    preferences.apply(preference_key("acme", "k"), None, CONTACTS_REMOVED.name)
    assert preferences.removed == {}
