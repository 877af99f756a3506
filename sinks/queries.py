"""Analytics read from ClickHouse: one notification's timeline, and the operators' report.

Every query reads `notification_events` with FINAL, so replayed events are counted once.
"""

from typing import Any
from uuid import UUID

from clickhouse_driver import Client

TIMELINE = """
SELECT event_time_ms, stage, status, channel, provider, attempt, error_code, detail, latency_ms
FROM notification_events FINAL
WHERE notification_id = %(notification_id)s
ORDER BY event_time_ms, stage
"""

COUNTS = """
SELECT channel, status, count() AS events
FROM notification_events FINAL
WHERE event_time >= now() - %(seconds)s
GROUP BY channel, status
ORDER BY channel, status
"""

# Provider latency: request produced → provider accepted, per channel.
LATENCY = """
SELECT channel, count() AS sent,
       quantile(0.5)(latency_ms) AS p50, quantile(0.95)(latency_ms) AS p95, quantile(0.99)(latency_ms) AS p99
FROM notification_events FINAL
WHERE status = 'sent' AND event_time >= now() - %(seconds)s
GROUP BY channel
ORDER BY channel
"""

COLUMNS = ("at_ms", "stage", "status", "channel", "provider", "attempt", "error_code", "detail", "latency_ms")


def timeline(client: Client, notification_id: UUID) -> list[dict[str, Any]]:
    rows = client.execute(TIMELINE, {"notification_id": str(notification_id)})
    return [dict(zip(COLUMNS, row)) for row in rows]


def counts(client: Client, seconds: int) -> list[tuple[str, str, int]]:
    return client.execute(COUNTS, {"seconds": seconds})


def latency(client: Client, seconds: int) -> list[tuple[str, int, float, float, float]]:
    return client.execute(LATENCY, {"seconds": seconds})
