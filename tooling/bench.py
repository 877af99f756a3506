"""`herald bench`: N notifications through the running pipeline to the local mailbox, measured.

Prints ARCHITECTURE.md's benchmark contract. `lost` and `duplicates` come from what the mailbox
actually received; `raw_hop_per_s` is measured in the same run, before the pipeline load, on a plain
aiokafka consume → fastavro decode → encode → produce loop: the ceiling one stage could reach.
"""

import asyncio
import json
import os
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.serde import default_serde
from sinks.clickhouse_client import connect
from streams.ids import notification_id
from tooling.local import mailbox_dir
from tooling.mailbox import RECEIPTS, Receipt
from tooling.producer import publish
from streams.settings import Settings
from streams.tables import template_key
from streams.topics import REQUESTS, TEMPLATES, TopicSpec, create_topics

TEMPLATE_ID = "herald-bench"
RAW_IN = TopicSpec("herald.bench.raw-in", ("NotificationRequest",), "herald bench's raw hop reads it")
RAW_OUT = TopicSpec("herald.bench.raw-out", ("NotificationRequest",), "herald bench's raw hop writes it")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Mailbox:
    """Follows received.jsonl as it grows."""

    path: Path
    offset: int = 0
    first_seen: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0

    def skip_existing(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def poll(self, wanted: set[str]) -> None:
        if not self.path.exists():
            return
        with self.path.open() as lines:
            lines.seek(self.offset)
            while line := lines.readline():
                if not line.endswith("\n"):
                    break
                self.offset = lines.tell()
                receipt = Receipt(**json.loads(line))
                if receipt.notification_id not in wanted:
                    continue
                if receipt.notification_id in self.first_seen:
                    self.duplicates += 1
                else:
                    self.first_seen[receipt.notification_id] = receipt.received_ms


def herald_pids() -> list[int]:
    """Herald's own long-running processes: the stage workers and the gateway."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tooling.cli" in cmdline and (b"worker" in cmdline or b"gateway" in cmdline) and b"all" not in cmdline:
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            continue
    return total / CLOCK_TICKS


def rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50": values[0] if values else 0.0, "p95": values[0] if values else 0.0, "p99": values[0] if values else 0.0}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 1), "p95": round(cuts[94], 1), "p99": round(cuts[98], 1)}


def put_template(channels: list[str]) -> None:
    from schemas.models import TemplateUpserted

    template = TemplateUpserted.model_validate({
        "template_id": TEMPLATE_ID, "version": 1, "locale": "en", "variables": ["n"],
        "parts": [{"channel": c, "subject": "Bench #{{ n }}", "text": "Notification {{ n }} of the benchmark.",
                   "html": "<p>Notification <b>{{ n }}</b></p>"} for c in channels],
        "updated_at": datetime.now(timezone.utc),
    })
    publish(TEMPLATES, [(template_key(TEMPLATE_ID, "en", 1), template)])


async def raw_hop(settings: Settings, count: int) -> float:
    """Messages per second through consume → decode → encode → produce, with nothing else."""
    serde = default_serde()
    create_topics(settings, (RAW_IN, RAW_OUT))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    run = uuid.uuid4()
    sample = bench_request(run, 0)
    payload = serde.encode("NotificationRequest", sample)
    for _ in range(count):
        await producer.send(RAW_IN.name, payload)
    await producer.flush()
    consumer = AIOKafkaConsumer(RAW_IN.name, bootstrap_servers=settings.kafka_bootstrap, group_id=f"herald-bench-{run}",
                                auto_offset_reset="latest", enable_auto_commit=False, max_poll_records=5000)
    await consumer.start()
    # Start from the batch we just wrote: count records back from the end.
    partitions = consumer.assignment() or set()
    while not partitions:
        await consumer.getmany(timeout_ms=200)
        partitions = consumer.assignment()
    ends = await consumer.end_offsets(list(partitions))
    for tp, end in ends.items():
        consumer.seek(tp, max(0, end - count))
    done, started = 0, time.perf_counter()
    while done < count:
        batches = await consumer.getmany(timeout_ms=1000)
        for messages in batches.values():
            for message in messages:
                record = serde.decode(message.value, "NotificationRequest")
                await producer.send(RAW_OUT.name, serde.encode("NotificationRequest", record))
                done += 1
    await producer.flush()
    elapsed = time.perf_counter() - started
    await consumer.stop()
    await producer.stop()
    return count / elapsed


def bench_request(run: uuid.UUID, i: int, channels: list[str] | None = None) -> dict[str, Any]:
    return {
        "tenant": f"bench-{run.hex[:8]}", "idempotency_key": f"bench-{run}-{i}", "template_id": TEMPLATE_ID,
        "template_version": None,
        "recipient": {"user_id": f"bench-user-{i}", "email": f"bench{i}@example.com", "phone": None,
                      "push_tokens": [], "locale": None, "time_zone": None},
        "variables": {"n": str(i)}, "channels": channels or [], "category": "transactional",
        "priority": "normal", "send_at": None, "fallback_channel": None,
        "requested_at": datetime.now(timezone.utc), "metadata": {},
    }


async def produce_requests(settings: Settings, run: uuid.UUID, n: int, rate: float | None,
                           channels: list[str]) -> dict[str, float]:
    """Send N requests as a user's service would; returns the notification ids ingest will stamp,
    each with its request's produce time (epoch ms)."""
    serde = default_serde()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    requested: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(n):
        if rate:
            ahead = i / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        request = bench_request(run, i, channels)
        nid = str(notification_id(request["tenant"], request["idempotency_key"], ""))
        requested[nid] = request["requested_at"].timestamp() * 1000
        await producer.send(REQUESTS.name, serde.encode("NotificationRequest", request),
                            key=request["idempotency_key"].encode())
    await producer.flush()
    await producer.stop()
    return requested


def stage_figures(settings: Settings, tenant: str) -> tuple[int, dict[str, Any]]:
    client = connect(settings)
    rows = client.execute(
        "SELECT stage, status, count(), quantile(0.5)(latency_ms) FROM notification_events FINAL "
        "WHERE tenant = %(tenant)s GROUP BY stage, status ORDER BY stage, status", {"tenant": tenant})
    stages = {f"{stage}.{status}": {"events": count, "p50_ms_since_request": p50} for stage, status, count, p50 in rows}
    return sum(count for _, _, count, _ in rows), stages


async def run_bench(settings: Settings, n: int, rate: float | None, channels: list[str], idle_timeout: float,
                    progress: Any = None) -> dict[str, Any]:
    put_template(channels)
    raw_per_s = await raw_hop(settings, min(max(n, 5000), 50_000))
    run = uuid.uuid4()
    mailbox = Mailbox(mailbox_dir(settings) / RECEIPTS)
    mailbox.skip_existing()
    pids = herald_pids()
    cpu_before = cpu_seconds(pids)
    started_ms = time.time() * 1000
    requested = await produce_requests(settings, run, n, rate, channels)
    wanted = set(requested)
    last_progress, last_count = time.monotonic(), 0
    while len(mailbox.first_seen) < n and time.monotonic() - last_progress < idle_timeout:
        await asyncio.sleep(0.5)
        mailbox.poll(wanted)
        if len(mailbox.first_seen) > last_count:
            last_count, last_progress = len(mailbox.first_seen), time.monotonic()
            if progress:
                progress(last_count, n)
    await asyncio.sleep(0.5)
    mailbox.poll(wanted)  # late duplicates
    cpu = cpu_seconds(pids) - cpu_before
    delivered = len(mailbox.first_seen)
    wall_s = (max(mailbox.first_seen.values(), default=started_ms) - started_ms) / 1000
    latencies = [received - requested[nid] for nid, received in mailbox.first_seen.items()]
    await asyncio.sleep(settings.sink_flush_seconds + 2)  # the sink's last batch
    rows, stages = stage_figures(settings, f"bench-{run.hex[:8]}")
    return {
        "notifications": n,
        "delivered": delivered,
        "lost": n - delivered,
        "duplicates": mailbox.duplicates,
        "throughput_per_s": round(delivered / wall_s, 1) if wall_s > 0 else 0.0,
        "latency_ms": quantiles(latencies),
        "raw_hop_per_s": round(raw_per_s, 1),
        "cpu_us_per_notification": round(cpu * 1e6 / delivered, 1) if delivered else 0.0,
        "clickhouse_rows": rows,
        "worker_rss_mb": round(rss_mb(pids), 1),
        "stages": stages,
    }
