"""Tables folded from compacted logs: templates, preferences, and the stages' own state (idempotency
keys seen by ingest, notifications delivered by deliver).

Every stage process that needs one reads the whole compacted topic from the beginning, folds it into
memory and keeps tailing it. Not Faust tables: we need our own index (a template's versions and
locales under one id); the source topic *is* the log (no second changelog topic to keep in step); a
stage must not process anything until the table has caught up, which `wait_ready()` makes explicit;
and a Faust table's recovery on restart lost messages of its stage's input in our SIGKILL test (a
block of ~24 per partition right after the restart, in faust-streaming 0.15.3), which stateless
Faust stages never did.
"""

import asyncio
import json
import logging
import re
import time
from datetime import datetime
from uuid import UUID
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from faust.types import ProducerT

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from schemas.serde import AvroSerde, SchemaDecodeError
from streams.codec import default_serde
from streams.kafka_clients import client_kwargs
from streams.settings import Settings
from streams.topics import CANCELLATIONS, CONTACTS_REMOVED, PREFERENCES, RECEIPTS, TEMPLATES, TopicSpec

log = logging.getLogger(__name__)


class FoldedTable(Service):
    spec: TopicSpec
    # Further logs folded into the same table (the preference table: contacts found dead).
    also: tuple[TopicSpec, ...] = ()

    def __init__(self, settings: Settings, serde: AvroSerde | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.serde = serde or default_serde()
        self.ready = asyncio.Event()

    @abstractmethod
    def fold(self, key: bytes, record: dict[str, Any] | None) -> None:
        """Apply one log entry; `record` is None for a tombstone."""

    async def on_start(self) -> None:
        # No group: every process reads every partition of the log.
        self.consumer = AIOKafkaConsumer(
            **client_kwargs(self.settings), enable_auto_commit=False, group_id=None
        )
        await self.consumer.start()
        # A consumer without a group tracks metadata only for topics it was told about; aiokafka has no
        # public call for that short of subscribing (which needs a group).
        partitions = []
        for spec in (self.spec, *self.also):
            await self.consumer._client.add_topic(spec.name)
            found = [TopicPartition(spec.name, p) for p in self.consumer.partitions_for_topic(spec.name) or ()]
            if not found:
                raise RuntimeError(f"topic {spec.name} is missing; run `herald topics create`")
            partitions += found
        self.consumer.assign(partitions)
        await self.consumer.seek_to_beginning(*partitions)
        self.end_offsets = await self.consumer.end_offsets(partitions)

    async def on_stop(self) -> None:
        if hasattr(self, "consumer"):
            await self.consumer.stop()

    async def wait_ready(self) -> None:
        await self.ready.wait()

    @Service.task
    async def _tail(self) -> None:
        while not self.should_stop:
            batches = await self.consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    self.apply(message.key, message.value, message.topic)
            if not self.ready.is_set() and await self.caught_up():
                log.info("%s: folded %d keys", self.spec.name, len(self))
                self.ready.set()

    def apply(self, key: bytes, value: bytes | None, topic: str | None = None) -> None:
        if topic is not None and topic != self.spec.name:
            self.apply_other(topic, key, value)
            return
        if value is None:
            self.fold(key, None)
            return
        try:
            self.fold(key, self.decode(value))
        except (SchemaDecodeError, ValueError) as exc:  # a bad entry must not stop the table; it stays in the log
            log.error("%s: skipping undecodable entry for key %r: %s", self.spec.name, key, exc)

    def decode(self, value: bytes) -> Any:
        return self.serde.decode(value, self.spec.schemas[0])

    def apply_other(self, topic: str, key: bytes, value: bytes | None) -> None:
        """An entry of one of the `also` logs; tables that have some fold them here."""
        raise NotImplementedError(f"{type(self).__name__} folds no topic {topic}")

    async def caught_up(self) -> bool:
        for tp, end in self.end_offsets.items():
            if await self.consumer.position(tp) < end:
                return False
        return True

    @abstractmethod
    def __len__(self) -> int: ...


DEFAULT_TENANT = "default"
# A tenant's name in a log key: no '/' (it ends the tenant) and no leading '@' (see tenant_key).
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def valid_tenant(tenant: str) -> str:
    if not TENANT_NAME.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r}: 1 to 128 of letters, digits, '.', '_' and '-', starting with a "
                         "letter or digit")
    return tenant


def tenant_key(tenant: str, rest: str) -> str:
    """A log key under a tenant: '@<tenant>/<rest>'. The default tenant's keys stay bare, as they were
    before tenants, so a new write replaces an old one in a compacted log; a bare key that starts with
    '@' is the default tenant's written out ('@default/@…'), so no two (tenant, rest) share a key."""
    if tenant == DEFAULT_TENANT and not rest.startswith("@"):
        return rest
    return f"@{valid_tenant(tenant)}/{rest}"


def tenant_key_parts(key: str) -> tuple[str, str]:
    """(tenant, rest) of a key made by tenant_key; a bare key is the default tenant's (and any key
    written before tenants)."""
    if key.startswith("@") and "/" in key:
        tenant, rest = key[1:].split("/", 1)
        return tenant, rest
    return DEFAULT_TENANT, key


def template_key(tenant: str, template_id: str, locale: str, version: int) -> bytes:
    """Key on herald.templates: one per tenant, version and locale, so compaction keeps every version."""
    return tenant_key(tenant, f"{template_id}/{locale}/{version}").encode()


def template_key_parts(key: bytes) -> tuple[str, str, str, int]:
    tenant, rest = tenant_key_parts(key.decode())
    template_id, locale, version = rest.rsplit("/", 2)
    return tenant, template_id, locale, int(version)


def preference_key(tenant: str, user_id: str) -> bytes:
    """Key on herald.preferences: the tenant's user."""
    return tenant_key(tenant, user_id).encode()


class TemplateTable(FoldedTable):
    """(tenant, template_id) → locale → version → TemplateUpserted.

    A tenant renders its own templates, and the default tenant's where it has none of that id: the
    default tenant's templates are the shared catalog (docs/decisions.md). No tenant renders another's.
    """

    spec = TEMPLATES

    def __init__(self, settings: Settings, serde: AvroSerde | None = None, **kwargs: Any) -> None:
        super().__init__(settings, serde, **kwargs)
        self.templates: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = {}

    def fold(self, key: bytes, record: dict[str, Any] | None) -> None:
        if record is None or record["deleted"]:
            tenant, template_id, locale, version = template_key_parts(key)
            self.templates.get((tenant, template_id), {}).get(locale, {}).pop(version, None)
        else:
            versions = self.templates.setdefault((record["tenant"], record["template_id"]), {})
            versions.setdefault(record["locale"], {})[record["version"]] = record

    def find(self, tenant: str, template_id: str, locale: str | None = None,
             version: int | None = None) -> dict[str, Any] | None:
        """The tenant's template for a locale (falling back to its language, then 'en', then any) and
        version (or the latest)."""
        locales = self.templates.get((tenant, template_id))
        if not locales:
            return None
        versions = None
        for candidate in (locale, locale.split("-")[0] if locale else None, "en"):
            if candidate and locales.get(candidate):
                versions = locales[candidate]
                break
        if versions is None:
            versions = next((v for v in locales.values() if v), None)
        if not versions:
            return None
        return versions.get(version) if version is not None else versions[max(versions)]

    def for_notification(self, notification: dict[str, Any], preferences: dict[str, Any] | None) -> dict[str, Any] | None:
        """The template a notification renders with, in the recipient's (or the preferred) locale: its
        tenant's, else the default tenant's."""
        locale = notification["recipient"]["locale"] or (preferences or {}).get("locale")
        for tenant in dict.fromkeys((notification["tenant"], DEFAULT_TENANT)):
            if (tenant, notification["template_id"]) in self.templates:
                return self.find(tenant, notification["template_id"], locale, notification["template_version"])
        return None

    def __len__(self) -> int:
        return len(self.templates)


Owner = tuple[str, str]  # (tenant, user_id)


class PreferenceTable(FoldedTable):
    """(tenant, user_id) → PreferencesUpdated (the whole, latest record), less the contacts providers
    said are dead. A tenant's users are its own: no fallback to another tenant's preferences.

    A dead contact (herald.contacts.removed, deliver writes it) stays dead until the user's preferences
    are updated after it: a new PreferencesUpdated that lists it again brings it back.
    """

    spec = PREFERENCES
    also = (CONTACTS_REMOVED,)

    def __init__(self, settings: Settings, serde: AvroSerde | None = None, **kwargs: Any) -> None:
        super().__init__(settings, serde, **kwargs)
        self.preferences: dict[Owner, dict[str, Any]] = {}
        # (tenant, user_id) → {(channel, address): removed_at}
        self.removed: dict[Owner, dict[tuple[str, str], datetime]] = {}

    def fold(self, key: bytes, record: dict[str, Any] | None) -> None:
        if record is None:
            self.preferences.pop(tenant_key_parts(key.decode()), None)
        else:
            self.preferences[(record["tenant"], record["user_id"])] = record

    def apply_other(self, topic: str, key: bytes, value: bytes | None) -> None:
        if value is None:  # compaction's tombstone for a removal: nothing to undo, the address was dead
            return
        try:
            removal = self.serde.decode(value, CONTACTS_REMOVED.schemas[0])
        except (SchemaDecodeError, ValueError) as exc:
            log.error("%s: skipping undecodable entry for key %r: %s", topic, key, exc)
            return
        owner = (removal["tenant"], removal["user_id"])
        self.removed.setdefault(owner, {})[(removal["channel"], removal["address"])] = removal["removed_at"]

    def get(self, tenant: str, user_id: str) -> dict[str, Any] | None:
        return self.preferences.get((tenant, user_id))

    def dead(self, tenant: str, user_id: str) -> set[tuple[str, str]]:
        """The (channel, address) pairs of the user a provider said are dead since their last update."""
        removed = self.removed.get((tenant, user_id))
        if not removed:
            return set()
        preferences = self.preferences.get((tenant, user_id))
        since = preferences["updated_at"] if preferences else None
        return {contact for contact, at in removed.items() if since is None or at > since}

    def __len__(self) -> int:
        return len(self.preferences)


def cancellation_key(tenant: str, notification_id: UUID) -> bytes:
    """Key on herald.cancellations: one per tenant and notification, so a cancellation in one tenant's
    name never replaces another's in the compacted log. The default tenant's is the id's 16 bytes, as
    before tenants."""
    if tenant == DEFAULT_TENANT:
        return notification_id.bytes
    return tenant_key(tenant, str(notification_id)).encode()


class CancellationTable(FoldedTable):
    """The notifications callers cancelled (herald.cancellations): deliver sends none of theirs. A
    cancellation is a few dozen bytes and callers cancel few notifications; the log is compacted.

    Held as (notification id, tenant): a cancellation counts only for a notification of the tenant
    that made it. The gateway refuses to cancel another tenant's notification when ClickHouse knows
    it; this holds in the moment before it does."""

    spec = CANCELLATIONS

    def __init__(self, settings: Settings, serde: AvroSerde | None = None, **kwargs: Any) -> None:
        super().__init__(settings, serde, **kwargs)
        self.cancelled: set[tuple[UUID, str]] = set()

    def fold(self, key: bytes, record: dict[str, Any] | None) -> None:
        if record is not None:
            self.cancelled.add((record["notification_id"], record["tenant"]))
            return
        try:
            if len(key) == 16:
                self.cancelled.discard((UUID(bytes=key), DEFAULT_TENANT))
            else:
                tenant, notification_id = tenant_key_parts(key.decode())
                self.cancelled.discard((UUID(notification_id), tenant))
        except ValueError:
            log.warning("%s: a tombstone with a key that is no cancellation's: %r", self.spec.name, key)

    def cancels(self, notification: dict[str, Any]) -> bool:
        """Whether the notification's own tenant cancelled it (a delivery task or a notification)."""
        return (notification["notification_id"], notification["tenant"]) in self.cancelled

    def __len__(self) -> int:
        return len(self.cancelled)


class ReceiptTable(FoldedTable):
    """Providers' final word on deliveries they had accepted (herald.receipts): (notification id,
    channel) → 'delivered' or 'failed'. The log keeps a day; the table forgets what is older too."""

    spec = RECEIPTS

    def __init__(self, settings: Settings, serde: AvroSerde | None = None, **kwargs: Any) -> None:
        super().__init__(settings, serde, **kwargs)
        self.receipts: dict[tuple[UUID, str], tuple[str, float]] = {}  # → (status, received at)
        self.prune_at = 10_000

    def fold(self, key: bytes, record: dict[str, Any] | None) -> None:
        if record is None:
            return
        self.receipts[(record["notification_id"], record["channel"])] = (record["status"], record["received_at"].timestamp())
        if len(self.receipts) >= self.prune_at:
            older_than = time.time() - self.settings.receipts_retention_ms / 1000
            self.receipts = {k: v for k, v in self.receipts.items() if v[1] >= older_than}
            self.prune_at = max(10_000, 2 * len(self.receipts))

    def status(self, notification_id: UUID, channel: str) -> str | None:
        found = self.receipts.get((notification_id, channel))
        return found[0] if found else None

    def __len__(self) -> int:
        return len(self.receipts)


class StateTable(FoldedTable):
    """A stage's own state: key → small JSON value, folded from a compacted topic the stage writes.

    The topic holds blocks, not one record per key: one record per chunk of the stage, keyed by a
    block id of its own (where the chunk started in its input log, and a random part), whose value
    is the chunk's writes, `{"at": epoch seconds, "entries": {key: value}}`. A chunk then costs one
    produce instead of one per key. A replayed chunk writes a new block: it skips what it finds done,
    so it must not replace the block that recorded that. Writes are outputs of the handler
    (`Outputs.put_state`): the runtime produces the block with the batch's other records and folds
    it here once the broker acknowledged it, so when an input offset is committed its state change
    is in Kafka. `purge` tombstones blocks older than `ttl_s`, which keeps memory bounded.
    """

    # Entries per block record, so a block stays far below the message size limit.
    BLOCK_ENTRIES = 2000

    def __init__(self, settings: Settings, spec: TopicSpec, ttl_s: float, producer: Callable[[], ProducerT],
                 **kwargs: Any) -> None:
        self.spec = spec
        super().__init__(settings, **kwargs)
        self.ttl_s = ttl_s
        self.producer = producer
        self.entries: dict[str, tuple[Any, str]] = {}  # key → (value, block id)
        self.blocks: dict[str, tuple[float, list[str]]] = {}  # block id → (written at, keys)
        self.expired: set[str] = set()  # blocks found past their TTL while folding, to tombstone

    def decode(self, value: bytes) -> Any:
        return json.loads(value)

    def encode(self, block_id: str, writes: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        """The block records (key, value) for one batch's writes."""
        at = time.time()
        items = list(writes.items())
        records = []
        for start in range(0, len(items), self.BLOCK_ENTRIES):
            key = block_id if start == 0 else f"{block_id}#{start // self.BLOCK_ENTRIES}"
            entries = dict(items[start:start + self.BLOCK_ENTRIES])
            records.append((key.encode(), json.dumps({"at": at, "entries": entries}).encode()))
        return records

    def fold(self, key: bytes, record: Any) -> None:
        block_id = key.decode(errors="replace")
        self.forget(block_id)
        if record is None:
            self.expired.discard(block_id)
            return
        try:
            at, entries = float(record["at"]), dict(record["entries"])
        except (TypeError, KeyError, ValueError):
            log.warning("%s: skipping malformed block %r", self.spec.name, key)
            return
        if at < time.time() - self.ttl_s:  # expired while nobody purged it: never held in memory
            self.expired.add(block_id)
            return
        self.blocks[block_id] = (at, list(entries))
        for entry_key, value in entries.items():
            self.entries[entry_key] = (value, block_id)

    def forget(self, block_id: str) -> None:
        """Drop a block and the entries it was the latest writer of."""
        _, keys = self.blocks.pop(block_id, (0.0, []))
        for key in keys:
            if self.entries.get(key, (None, None))[1] == block_id:
                del self.entries[key]

    def get(self, key: str) -> Any:
        entry = self.entries.get(key)
        return None if entry is None else entry[0]

    async def purge(self) -> int:
        """Tombstone every block older than the TTL; returns how many."""
        older_than = time.time() - self.ttl_s
        stale = [block_id for block_id, (at, _) in self.blocks.items() if at < older_than]
        stale.extend(self.expired)
        self.expired.clear()
        for block_id in stale:
            self.forget(block_id)
            await self.producer().send(self.spec.name, block_id.encode(), None, None, None, None)
        return len(stale)

    def __len__(self) -> int:
        return len(self.entries)
