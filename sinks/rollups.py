"""The dashboard's figures, read from the per-minute rollups of migration 0003 (never the raw events
with FINAL), and the rebuild of those rollups after a replay.

events_per_minute is a SummingMergeTree: rows of one key are summed only when parts merge, so every
read sums `events` itself. latency_per_minute holds quantile states, merged with quantilesMerge.
"""

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from clickhouse_driver import Client

# The steps of a delivery on its channel, in order (`accepted` is before any channel: its own figure).
FUNNEL_STEPS = ("routed", "sent", "delivered", "opened", "clicked")
# Where a notification (or one of its deliveries) ended without reaching the recipient.
FAILURE_STATUSES = ("rejected", "failed", "dead_lettered", "expired")
# Per-minute series on the throughput chart.
THROUGHPUT_STATUSES = ("accepted", "sent", "delivered", "failed")
QUANTILES = ("p50", "p95", "p99")

TOTALS = """
SELECT channel, status, sum(events)
FROM events_per_minute
WHERE tenant = %(tenant)s AND minute >= toDateTime(%(since)s)
GROUP BY channel, status
"""

FAILURES = """
SELECT channel, status, error_code, sum(events) AS n
FROM events_per_minute
WHERE tenant = %(tenant)s AND minute >= toDateTime(%(since)s) AND status IN %(statuses)s
GROUP BY channel, status, error_code
ORDER BY n DESC, channel, status, error_code
LIMIT 50
"""

PER_MINUTE = """
SELECT toUInt32(minute) AS at, status, sum(events)
FROM events_per_minute
WHERE tenant = %(tenant)s AND minute >= toDateTime(%(since)s) AND status IN %(statuses)s
GROUP BY at, status
"""

# Provider latency (request produced → provider accepted) of the `sent` events, all channels together.
LATENCY = """
SELECT toUInt32(minute) AS at, quantilesMerge(0.5, 0.95, 0.99)(latency)
FROM latency_per_minute
WHERE tenant = %(tenant)s AND minute >= toDateTime(%(since)s) AND status = 'sent'
GROUP BY at
"""

# The same SELECTs as the materialized views of migration 0003, over the stored rows with FINAL.
REBUILD = {
    "events_per_minute": """
INSERT INTO events_per_minute
SELECT toStartOfMinute(event_time) AS minute, tenant, channel, status, error_code, count() AS events
FROM notification_events FINAL
WHERE toYYYYMMDD(event_time) = %(day)s
GROUP BY minute, tenant, channel, status, error_code
""",
    "latency_per_minute": """
INSERT INTO latency_per_minute
SELECT toStartOfMinute(event_time) AS minute, tenant, channel, status,
       quantilesState(0.5, 0.95, 0.99)(assumeNotNull(latency_ms)) AS latency
FROM notification_events FINAL
WHERE toYYYYMMDD(event_time) = %(day)s AND latency_ms IS NOT NULL
GROUP BY minute, tenant, channel, status
""",
}


def minutes(since: int, now: int) -> list[int]:
    """Every minute (epoch seconds) from the one holding `since` to the one holding `now`."""
    return list(range(since - since % 60, now - now % 60 + 1, 60))


def series(rows: Iterable[tuple[int, str, int]], grid: list[int], names: Iterable[str]) -> dict[str, list[int]]:
    """(minute, name, count) rows as one count per minute of `grid` for each name; 0 where none."""
    index = {at: i for i, at in enumerate(grid)}
    out = {name: [0] * len(grid) for name in names}
    for at, name, count in rows:
        if at in index and name in out:
            out[name][index[at]] += count
    return out


def summary(client: Client, tenant: str, seconds: int, now: float | None = None) -> dict[str, Any]:
    """Everything the dashboard draws for `tenant` over the last `seconds`, as JSON-ready data."""
    now = int(time.time() if now is None else now)
    since = now - seconds
    grid = minutes(since, now)
    params = {"tenant": tenant, "since": since - since % 60}
    totals = client.execute(TOTALS, params)
    accepted = sum(n for channel, status, n in totals if status == "accepted")
    funnel: dict[str, dict[str, int]] = {}
    for channel, status, n in totals:
        if channel and status in FUNNEL_STEPS:
            funnel.setdefault(channel, dict.fromkeys(FUNNEL_STEPS, 0))[status] += n
    failures = [{"channel": c, "status": s, "reason": code, "count": n}
                for c, s, code, n in client.execute(FAILURES, {**params, "statuses": FAILURE_STATUSES})]
    per_minute = client.execute(PER_MINUTE, {**params, "statuses": THROUGHPUT_STATUSES})
    latency = {at: values for at, values in client.execute(LATENCY, params)}
    return {
        "tenant": tenant, "since": params["since"], "until": now, "accepted": accepted,
        "funnel": dict(sorted(funnel.items())), "failures": failures,
        "minutes": grid,
        "throughput": series(per_minute, grid, THROUGHPUT_STATUSES),
        # null where a minute has no sent event: a gap in the line, not a latency of 0
        "latency": {q: [latency[at][i] if at in latency else None for at in grid] for i, q in enumerate(QUANTILES)},
    }


def rebuild(client: Client, since: datetime | None) -> list[int]:
    """Recompute the rollups' days that hold events from `since` on (every day when None), from the stored
    events with FINAL; returns those days (YYYYMMDD).

    After `herald replay events`: the views counted the replayed copies once more, while
    notification_events collapses them. A day's rollup partitions are dropped, then refilled; events a
    sink inserts during that are counted twice. One day of margin before `since`, for events whose own
    time is before their time in the log (retries, a provider's late report).
    """
    where = "" if since is None else "WHERE event_time >= toDateTime(%(from)s)"
    days = [day for (day,) in client.execute(
        f"SELECT DISTINCT toYYYYMMDD(event_time) AS day FROM notification_events {where} ORDER BY day",
        {"from": int(since.timestamp()) - 86400} if since else {})]
    for day in days:
        for table, insert in REBUILD.items():
            client.execute(f"ALTER TABLE {table} DROP PARTITION {int(day)}")
            client.execute(insert, {"day": day})
    return days
