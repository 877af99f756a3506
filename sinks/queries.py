"""Analytics read from ClickHouse: one notification's timeline, whether notifications are done, and
the operators' report.

Every query reads `notification_events` with FINAL, so replayed events are counted once. Those that
serve a caller take a tenant and see only its events; "" (the operator's CLI) sees every tenant's.
"""

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from clickhouse_driver import Client

TIMELINE = """
SELECT event_time_ms, stage, status, channel, provider, attempt, error_code, detail, latency_ms
FROM notification_events FINAL
WHERE notification_id = %(notification_id)s AND (%(tenant)s = '' OR tenant = %(tenant)s)
ORDER BY event_time_ms, stage
"""

# The tenants a notification's events name (one, unless a caller made an id of another tenant's).
TENANTS_OF = """
SELECT DISTINCT tenant FROM notification_events WHERE notification_id = %(notification_id)s
"""

COUNTS = """
SELECT channel, status, count() AS events
FROM notification_events FINAL
WHERE event_time >= now() - %(seconds)s AND (%(tenant)s = '' OR tenant = %(tenant)s)
GROUP BY channel, status
ORDER BY channel, status
"""

# Provider latency: request produced → provider accepted, per channel.
LATENCY = """
SELECT channel, count() AS sent,
       quantile(0.5)(latency_ms) AS p50, quantile(0.95)(latency_ms) AS p95, quantile(0.99)(latency_ms) AS p99
FROM notification_events FINAL
WHERE status = 'sent' AND event_time >= now() - %(seconds)s AND (%(tenant)s = '' OR tenant = %(tenant)s)
GROUP BY channel
ORDER BY channel
"""

# What each provider did: sends, retries, failures (with the most common codes), per channel. With a
# primary and a secondary provider, the rows show how much went where while a breaker was open.
PROVIDERS = """
SELECT channel, provider, countIf(status = 'sent') AS sent, countIf(status = 'retried') AS retried,
       countIf(status = 'failed') AS failed, arrayStringConcat(topK(3)(nullIf(error_code, '')), ' ') AS codes
FROM notification_events FINAL
WHERE provider != '' AND event_time >= now() - %(seconds)s AND (%(tenant)s = '' OR tenant = %(tenant)s)
GROUP BY channel, provider
ORDER BY channel, provider
"""

# Each notification's statuses per channel ("" for the events about no channel: accepted, rejected, …).
STATUSES = """
SELECT toString(notification_id), channel, groupUniqArray(status)
FROM notification_events FINAL
WHERE notification_id IN %(ids)s
GROUP BY notification_id, channel
"""

# The digests that notifications were gathered into: their `digested` events name them ("digest <id>").
DIGESTS = """
SELECT DISTINCT replaceOne(detail, 'digest ', '')
FROM notification_events FINAL
WHERE notification_id IN %(ids)s AND status = 'digested'
"""

# Where a notification's story ends on a channel: sent (or what a provider reports later), given up
# on, or never attempted. `rejected`, `dead_lettered` and `digested` (its digest goes on, with a
# story of its own) also end it before any channel.
FINAL_STATUSES = frozenset({"rejected", "suppressed", "sent", "delivered", "failed", "dead_lettered", "expired",
                            "opened", "clicked", "read", "digested"})

# Deliveries waiting for their send_at: a `scheduled` event on a channel and no final status there yet.
# The caller leaves out what was cancelled (deliver records those only once they are due).
SCHEDULED = """
SELECT toString(notification_id), channel, any(template), any(category),
       anyIf(detail, status = 'scheduled'), min(event_time_ms) AS at_ms
FROM notification_events FINAL
WHERE tenant = %(tenant)s
  AND notification_id IN (SELECT notification_id FROM notification_events WHERE tenant = %(tenant)s AND status = 'scheduled')
  AND toString(notification_id) NOT IN %(cancelled)s
GROUP BY notification_id, channel
HAVING countIf(status = 'scheduled') > 0 AND countIf(status IN %(final)s) = 0
ORDER BY at_ms, channel
LIMIT %(limit)s
"""

COLUMNS = ("at_ms", "stage", "status", "channel", "provider", "attempt", "error_code", "detail", "latency_ms")


def timeline(client: Client, notification_id: UUID, tenant: str = "") -> list[dict[str, Any]]:
    """The notification's events in order; only when it is `tenant`'s, when one is given."""
    rows = client.execute(TIMELINE, {"notification_id": str(notification_id), "tenant": tenant})
    return [dict(zip(COLUMNS, row)) for row in rows]


def tenants_of(client: Client, notification_id: UUID) -> set[str]:
    return {tenant for (tenant,) in client.execute(TENANTS_OF, {"notification_id": str(notification_id)})}


def scheduled(client: Client, tenant: str, limit: int, cancelled: Sequence[str]) -> list[dict[str, Any]]:
    """The tenant's deliveries still waiting for their send_at, first scheduled first; at most `limit`."""
    rows = client.execute(SCHEDULED, {"tenant": tenant, "limit": limit, "final": tuple(FINAL_STATUSES),
                                      # never empty: `NOT IN ()` is not SQL
                                      "cancelled": (*cancelled, "")})
    return [dict(zip(("notification_id", "channel", "template_id", "category", "detail", "scheduled_at_ms"), row))
            for row in rows]


def counts(client: Client, seconds: int, tenant: str) -> list[tuple[str, str, int]]:
    return client.execute(COUNTS, {"seconds": seconds, "tenant": tenant})


def latency(client: Client, seconds: int, tenant: str) -> list[tuple[str, int, float, float, float]]:
    return client.execute(LATENCY, {"seconds": seconds, "tenant": tenant})


def providers(client: Client, seconds: int, tenant: str) -> list[tuple[str, str, int, int, int, str]]:
    return client.execute(PROVIDERS, {"seconds": seconds, "tenant": tenant})


def statuses(client: Client, ids: Sequence[str]) -> dict[str, dict[str, set[str]]]:
    """notification id → channel → the statuses its events have reached; ids without events are absent."""
    found: dict[str, dict[str, set[str]]] = {}
    # A tuple: clickhouse-driver renders a list as an array, which IN does not take.
    for nid, channel, reached in client.execute(STATUSES, {"ids": tuple(ids)}):
        found.setdefault(nid, {})[channel] = set(reached)
    return found


def digests(client: Client, ids: Sequence[str]) -> list[str]:
    """The ids of the digests that notifications of `ids` were gathered into."""
    return [digest for (digest,) in client.execute(DIGESTS, {"ids": tuple(ids)})]


def settled(by_channel: dict[str, set[str]]) -> bool:
    """Whether a notification is done: stopped before any channel, or at a final status on each of its channels."""
    if by_channel.get("", set()) & FINAL_STATUSES:
        return True
    channels = [reached for channel, reached in by_channel.items() if channel]
    return bool(channels) and all(reached & FINAL_STATUSES for reached in channels)
