"""`herald bench`: N notifications through the running pipeline to the local mailbox, measured.

Prints the benchmark contract (README.md, "Benchmark"). `lost` and `duplicates` come from what the mailbox
actually received; `raw_hop_per_s` is measured in the same run, before the pipeline load, on a plain
aiokafka consume → fastavro decode → encode → produce loop: the ceiling one stage could reach.
`cpu_us_per_notification_by_stage` splits `cpu_us_per_notification` between the stage workers and
the gateway, named after their command lines.
"""

import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.codec import default_serde
from sinks.clickhouse_client import connect
from streams.ids import notification_id
from tooling.local import mailbox_dir, running_pid
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


def process_role(argv: list[str]) -> str | None:
    """What a `herald` process runs, from its command line: the stage after `--stage` (as
    tooling/processes.py's stage_command writes it), or `gateway`; None for anything else, such as the
    `--stage all` supervisor, which only waits."""
    if "tooling.cli" not in argv:
        return None
    if "worker" in argv and "--stage" in argv[:-1]:
        stage = argv[argv.index("--stage") + 1]
        return None if stage == "all" else stage
    return "gateway" if "gateway" in argv else None


def herald_processes(settings: Settings) -> dict[int, str]:
    """The stage workers and the gateway that `herald up` started for this data directory (the pid
    files' processes and their children, so not those of another stack on the machine), pid → role,
    in pid order: the order they were started in, so the stages come in flow order."""
    started = {pid for name in ("workers", "gateway") if (pid := running_pid(settings, name)) is not None}
    processes = {}
    for pid in sorted(int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if (pid in started or parent in started) and (role := process_role(argv)):
            processes[pid] = role
    return processes


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime so far of each process of `pids` still running."""
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def cpu_by_role(processes: dict[int, str], before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds each role used between the two readings, summed over its processes; a process
    missing from either reading (it exited) counts for nothing rather than for a negative."""
    used = dict.fromkeys(processes.values(), 0.0)
    for pid, role in processes.items():
        if pid in before and pid in after:
            used[role] += after[pid] - before[pid]
    return used


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
                                enable_idempotence=True, max_batch_size=256 * 1024)
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
                                enable_idempotence=True, max_batch_size=256 * 1024)
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
    processes = herald_processes(settings)
    cpu_before = cpu_seconds(processes)
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
    cpu = cpu_by_role(processes, cpu_before, cpu_seconds(processes))
    delivered = len(mailbox.first_seen)
    wall_s = (max(mailbox.first_seen.values(), default=started_ms) - started_ms) / 1000
    latencies = [received - requested[nid] for nid, received in mailbox.first_seen.items()]
    await asyncio.sleep(settings.sink_flush_seconds + 2)  # the sink's last batch
    rows, stages = stage_figures(settings, f"bench-{run.hex[:8]}")

    def per_notification(cpu_s: float) -> float:
        return round(cpu_s * 1e6 / delivered, 1) if delivered else 0.0

    return {
        "notifications": n,
        "delivered": delivered,
        "lost": n - delivered,
        "duplicates": mailbox.duplicates,
        "throughput_per_s": round(delivered / wall_s, 1) if wall_s > 0 else 0.0,
        "latency_ms": quantiles(latencies),
        "raw_hop_per_s": round(raw_per_s, 1),
        "cpu_us_per_notification": per_notification(sum(cpu.values())),
        "cpu_us_per_notification_by_stage": {role: per_notification(seconds) for role, seconds in cpu.items()},
        "clickhouse_rows": rows,
        "worker_rss_mb": round(rss_mb(list(processes)), 1),
        "stages": stages,
    }
