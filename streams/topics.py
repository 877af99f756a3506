"""The topic catalog (docs/architecture.md): every Kafka topic Herald uses, and `herald topics create`.

Producer and consumer of each topic are named in `doc`, so a reader finds both in one place.
"""

from dataclasses import dataclass
from operator import attrgetter

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.kafka_clients import client_kwargs
from streams.settings import Settings

CHANNELS = ("email", "sms", "push", "in_app", "chat")
# Non-blocking retry topics, one per backoff step (seconds); see agents/deliver.py.
RETRY_DELAYS_S = (5, 30, 300)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    schemas: tuple[str, ...]
    doc: str
    compacted: bool = False
    # Internal topics between stages carry RecordBundle messages (many records each); public ones
    # (what outside services produce or read) keep one record per message.
    bundled: bool = False
    # Whether records of one key must stay in order (and so in one partition). Where each key is
    # one notification's (accepted, validated, rendered, events), a bundle may hold any keys and go
    # to any partition: fewer, fuller bundles. Delivery tasks are keyed by user and stay in order.
    key_ordered: bool = True
    # The setting (a dotted path into Settings) holding how long a non-compacted topic keeps records.
    retention_setting: str = "topic_retention_ms"


def deliver_topic(channel: str, high: bool = False) -> str:
    return f"herald.deliver.{channel}" + (".high" if high else "")


def retry_topic(delay_s: int) -> str:
    return f"herald.retry.{delay_s}s"


REQUESTS = TopicSpec("herald.requests", ("NotificationRequest", "NotificationBatch"),
                     "business services and the gateway produce; ingest consumes")
ACCEPTED = TopicSpec("herald.accepted", ("Notification",), "ingest produces; validate consumes", bundled=True,
                   key_ordered=False)
VALIDATED = TopicSpec("herald.validated", ("Notification",), "validate and digest produce; template consumes", bundled=True,
                   key_ordered=False)
# Keyed by user (`<tenant>/<user_id>`): route keeps per-user state (frequency caps) by partition.
RENDERED = TopicSpec("herald.rendered", ("Notification",), "template produces; route consumes", bundled=True)
# A user's notifications of a template that declares a digest, gathered by the digest stage until
# the window closes: keyed '<tenant>/<user_id>' and key-ordered, so all of a user's reach one
# partition (and the worker that holds that user's open windows).
DIGEST = TopicSpec("herald.digest", ("Notification",),
                   "template produces notifications of a digest template; digest gathers them", bundled=True)
SCHEDULED = TopicSpec("herald.scheduled", ("DeliveryTask",),
                      "route produces deliveries with a send_at ahead (due_at); deliver sends them on when due",
                      bundled=True)
DIGEST_USERS = TopicSpec("herald.state.digest.users", (),
                         "digest writes and reads back: each user's open digest windows (JSON, per-user state)",
                         compacted=True)
CANCELLATIONS = TopicSpec("herald.cancellations", ("NotificationCancelled",),
                          "the gateway and `herald cancel` produce; deliver's cancellation table folds it", compacted=True)
# Kept `receipts_retention_ms` (a day): a receipt matters only until a fallback's wait is over.
RECEIPTS = TopicSpec("herald.receipts", ("DeliveryReceipt",),
                     "the gateway produces from providers' status callbacks; deliver's receipt table folds it",
                     retention_setting="receipts_retention_ms")
REJECTED = TopicSpec("herald.rejected", ("Rejection",), "validate and template produce; kept for audit")
DLQ = TopicSpec("herald.dlq", ("DeadLetter",), "every stage produces what it cannot process")
EVENTS = TopicSpec("herald.events", ("LifecycleEvent",), "every stage produces; the ClickHouse sink consumes", bundled=True,
                   key_ordered=False)
TEMPLATES = TopicSpec("herald.templates", ("TemplateUpserted",),
                      "`herald templates put` produces; the template table folds it", compacted=True)
PREFERENCES = TopicSpec("herald.preferences", ("PreferencesUpdated",),
                        "`herald prefs set` produces; the preference table folds it", compacted=True)
CONTACTS_REMOVED = TopicSpec("herald.contacts.removed", ("ContactRemoved",),
                             "deliver produces when a provider says an address is dead; the preference table folds it",
                             compacted=True)
# The inbox's own log, not herald.events: that is internal, bundled, keyed by notification and
# carries no content; this one is public, one record per message, keyed by '<tenant>/<user_id>' so
# a user's events stay in order, and the inbox (gateway/inbox.py) is folded from it alone. Kept
# `inbox.retention_ms` (90 days), not forever, so a gateway's replay on start stays bounded.
INBOX = TopicSpec("herald.inbox", ("InboxEvent",),
                  "deliver (in_app) produces messages, the gateway read and seen; the gateway's inbox folds it",
                  retention_setting="inbox.retention_ms")
TENANTS = TopicSpec("herald.tenants", ("ApiKeyChanged",),
                    "the gateway's admin endpoints (`herald tenants`) produce; every gateway's key table folds it",
                    compacted=True)
IDEMPOTENCY_KEYS = TopicSpec("herald.state.idempotency-keys", (),
                            "ingest writes and folds: idempotency keys it has seen (JSON, internal)", compacted=True)
REPLAYED = TopicSpec("herald.state.replayed", (),
                     "`herald replay dlq` writes and reads: the dead letters and rejections it sent back (JSON)",
                     compacted=True)
DELIVERED = TopicSpec("herald.state.delivered", (),
                      "deliver writes and folds: (notification, channel) pairs delivered (JSON, internal)", compacted=True)
# Per-user state (streams/user_state.py), partitioned like herald.rendered: one record per user.
ROUTE_USERS = TopicSpec("herald.state.route.users", (),
                        "route writes and reads back by partition: each user's recent sends per category and "
                        "channel, for frequency caps (JSON, internal)", compacted=True)
DELIVER = tuple(
    TopicSpec(deliver_topic(channel, high), ("DeliveryTask",), f"route produces; the {channel} deliver agent consumes",
              bundled=True)
    for channel in CHANNELS
    for high in (False, True)
)
DELIVER_BY_NAME = {spec.name: spec for spec in DELIVER}
RETRY = tuple(
    TopicSpec(retry_topic(delay), ("DeliveryTask",), "deliver produces failed attempts; deliver consumes when due",
              bundled=True)
    for delay in RETRY_DELAYS_S
)

CATALOG: tuple[TopicSpec, ...] = (
    REQUESTS, ACCEPTED, VALIDATED, RENDERED, DIGEST, REJECTED, *DELIVER, *RETRY, SCHEDULED, CANCELLATIONS, RECEIPTS, DLQ, EVENTS,
    TEMPLATES, PREFERENCES, CONTACTS_REMOVED, INBOX, TENANTS, IDEMPOTENCY_KEYS, DELIVERED, REPLAYED, ROUTE_USERS, DIGEST_USERS,
)


def topic_config(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    size = {"max.message.bytes": str(settings.max_message_bytes + 1024)}
    if spec.compacted:
        return {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", **size}
    return {"cleanup.policy": "delete", "retention.ms": str(attrgetter(spec.retention_setting)(settings)), **size}


def create_topics(settings: Settings, specs: tuple[TopicSpec, ...] = CATALOG) -> list[str]:
    """Create every topic of `specs` (the catalog) that does not exist yet; returns the names created."""
    admin = KafkaAdminClient(**client_kwargs(settings), client_id="herald-admin")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(spec.name, settings.topic_partitions, settings.topic_replication,
                     topic_configs=topic_config(spec, settings))
            for spec in specs
            if spec.name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created them between list and create
        return [t.name for t in missing]
    finally:
        admin.close()
