"""`herald bench`: N notifications through the running pipeline to the local providers, measured.

Each request asks for the bench's channels and goes to one of a pool of bench users, whose phone,
push token and chat webhook the bench publishes as their preferences. Prints the benchmark contract
(README.md, "Benchmark"), over all channels and per channel. `lost` and `duplicates` come from what
the providers actually received: the mailbox's and the peers' received.jsonl (tooling/peers), and for
in-app the herald.inbox topic; `raw_hop_per_s` is measured in the same run, before the pipeline load, on a plain
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
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.models import PreferencesUpdated
from streams.codec import default_serde
from sinks.clickhouse_client import connect
from streams.ids import notification_id
from tooling.local import mailbox_dir, running_pid
from tooling.peers.server import RECEIPTS, peer_dir
from tooling.producer import publish
from streams.kafka_clients import client_kwargs
from streams.settings import Settings
from streams.tables import preference_key, template_key
from streams.topics import INBOX, PREFERENCES, REQUESTS, TEMPLATES, TopicSpec, create_topics

TEMPLATE_ID = "herald-bench"
RAW_IN = TopicSpec("herald.bench.raw-in", ("NotificationRequest",), "herald bench's raw hop reads it")
RAW_OUT = TopicSpec("herald.bench.raw-out", ("NotificationRequest",), "herald bench's raw hop writes it")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# Where each channel's deliveries are counted: the received.jsonl of its providers (the mailbox's, the
# peers'), by channel. In-app has no peer: its provider is the herald.inbox topic (InboxFollower).
RECEIPT_PROVIDERS = {"email": ("mailbox",), "sms": ("twilio",), "push": ("apns", "fcm", "webpush"), "chat": ("webhook",)}
IN_APP = "in_app"
CHANNELS = (*RECEIPT_PROVIDERS, IN_APP)
# Channels whose address comes from the bench users' preferences (email's is on the request).
NEEDS_CONTACTS = {"sms", "push", "chat"}
USERS = 1000  # the pool of bench users the requests go to
PUSH_KINDS = ("apns", "fcm", "webpush")
FOLD_S = 3.0  # how long the stages may take to fold the bench's template and contacts


def parse_channels(values: Iterable[str]) -> list[str]:
    """`--channels email,sms --channels push` → ["email", "sms", "push"]: comma-separated or repeated,
    in order, each once; ValueError naming an unknown channel."""
    channels = list(dict.fromkeys(name.strip() for value in values for name in value.split(",") if name.strip()))
    unknown = [name for name in channels if name not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown channel {', '.join(unknown)}; the bench knows {', '.join(CHANNELS)}")
    if not channels:
        raise ValueError("no channel given")
    return channels


@dataclass
class Tally:
    """One channel's deliveries of the bench's notifications: when each was first received, and how
    many repeats followed (a provider that recognised one by its idempotency key still counts it: it
    was sent twice)."""

    wanted: set[str]
    first_seen: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0

    def add(self, notification_id: str | None, received_ms: float) -> None:
        if notification_id not in self.wanted:
            return
        if notification_id in self.first_seen:
            self.duplicates += 1
        else:
            self.first_seen[notification_id] = received_ms


@dataclass
class ReceiptFile:
    """Follows one provider's received.jsonl (the mailbox's or a peer's) as it grows: every line has a
    top-level notification_id and received_ms."""

    path: Path
    offset: int = 0

    def skip_existing(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def poll(self, tally: Tally) -> None:
        if not self.path.exists():
            return
        with self.path.open() as lines:
            lines.seek(self.offset)
            while line := lines.readline():
                if not line.endswith("\n"):  # still being written: read next time
                    break
                self.offset = lines.tell()
                receipt = json.loads(line)
                tally.add(receipt["notification_id"], receipt["received_ms"])


class InboxFollower:
    """Follows herald.inbox from its end offsets when started: each `message` event is an in-app
    delivery, received when the broker got it (the record's timestamp)."""

    def __init__(self, settings: Settings) -> None:
        self.serde = default_serde()
        # No group: the consumer is assigned every partition of the topic.
        self.consumer = AIOKafkaConsumer(INBOX.name, **client_kwargs(settings),
                                         enable_auto_commit=False, max_poll_records=5000)

    async def start(self) -> None:
        await self.consumer.start()
        partitions = list(self.consumer.assignment())
        for tp, end in (await self.consumer.end_offsets(partitions)).items():
            self.consumer.seek(tp, end)

    async def poll(self, tally: Tally) -> None:
        while batches := await self.consumer.getmany(timeout_ms=100):
            for messages in batches.values():
                for message in messages:
                    event = self.serde.decode(message.value, "InboxEvent")
                    if event["kind"] == "message":
                        tally.add(str(event["notification_id"]), message.timestamp)

    async def stop(self) -> None:
        await self.consumer.stop()


@dataclass
class Followers:
    """Each channel's followers: its providers' receipt files, and herald.inbox for in-app."""

    files: dict[str, list[ReceiptFile]]
    inbox: InboxFollower | None

    @classmethod
    async def start(cls, settings: Settings, channels: list[str]) -> "Followers":
        """From the receipts' ends now, before the requests go out."""
        files = {c: [ReceiptFile(receipts_dir(settings, p) / RECEIPTS) for p in RECEIPT_PROVIDERS[c]]
                 for c in channels if c in RECEIPT_PROVIDERS}
        for follower in (f for followers in files.values() for f in followers):
            follower.skip_existing()
        inbox = InboxFollower(settings) if IN_APP in channels else None
        if inbox:
            await inbox.start()
        return cls(files, inbox)

    async def poll(self, tallies: dict[str, Tally]) -> int:
        """Counts what arrived since the last poll; returns the deliveries so far, all channels."""
        for channel, followers in self.files.items():
            for follower in followers:
                follower.poll(tallies[channel])
        if self.inbox:
            await self.inbox.poll(tallies[IN_APP])
        return sum(len(t.first_seen) for t in tallies.values())

    async def stop(self) -> None:
        if self.inbox:
            await self.inbox.stop()


def receipts_dir(settings: Settings, provider: str) -> Path:
    return mailbox_dir(settings) if provider == "mailbox" else peer_dir(settings, provider)


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
    publish(TEMPLATES, [(template_key(template.tenant, TEMPLATE_ID, "en", 1), template)])


async def raw_hop(settings: Settings, count: int) -> float:
    """Messages per second through consume → decode → encode → produce, with nothing else."""
    serde = default_serde()
    create_topics(settings, (RAW_IN, RAW_OUT))
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5,
                                enable_idempotence=True, max_batch_size=256 * 1024)
    await producer.start()
    run = uuid.uuid4()
    sample = bench_request(run, 0)
    payload = serde.encode("NotificationRequest", sample)
    for _ in range(count):
        await producer.send(RAW_IN.name, payload)
    await producer.flush()
    consumer = AIOKafkaConsumer(RAW_IN.name, **client_kwargs(settings), group_id=f"herald-bench-{run}",
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


def bench_user(i: int) -> str:
    return f"bench-user-{i % USERS}"


def push_token(settings: Settings, user: int) -> str:
    """The user's one device, of a kind taken in turn: APNs, FCM, web push (a subscription the peer mints)."""
    device = uuid.uuid5(uuid.NAMESPACE_URL, bench_user(user)).hex
    kind = PUSH_KINDS[user % len(PUSH_KINDS)]
    if kind == "apns":
        return f"apns:{device * 2}"
    if kind == "fcm":
        return f"fcm:{device}"
    subscription = httpx.get(f"{peers_url(settings)}/push/_subscribe", params={"id": bench_user(user)}, timeout=10)
    subscription.raise_for_status()
    return subscription.json()["token"]


def contacts(settings: Settings, tenant: str, user: int) -> PreferencesUpdated:
    """A bench user's phone (a French mobile), push token and chat webhook (generic and signed: it has
    an idempotency key, so a resend shows as a duplicate at the peer)."""
    name = bench_user(user)
    return PreferencesUpdated.model_validate({
        "user_id": name, "tenant": tenant, "phone": f"+33612{user:06d}", "push_tokens": [push_token(settings, user)],
        "chat_webhook": f"{peers_url(settings)}/webhooks/{name}", "updated_at": datetime.now(timezone.utc)})


def publish_contacts(settings: Settings, tenant: str, users: int) -> None:
    """The bench users' preferences, rewritten each run (which also revives a contact marked dead)."""
    publish(PREFERENCES, [(preference_key(tenant, bench_user(user)), contacts(settings, tenant, user))
                          for user in range(users)])


def peers_url(settings: Settings) -> str:
    return f"http://{settings.peers_host}:{settings.peers_port}"


def bench_request(run: uuid.UUID, i: int, channels: list[str] | None = None) -> dict[str, Any]:
    return {
        "tenant": bench_tenant(run), "idempotency_key": f"bench-{run}-{i}", "template_id": TEMPLATE_ID,
        "template_version": None,
        "recipient": {"user_id": bench_user(i), "email": f"bench{i}@example.com", "phone": None,
                      "push_tokens": [], "locale": None, "time_zone": None},
        "variables": {"n": str(i)}, "channels": channels or [], "category": "transactional",
        "priority": "normal", "send_at": None, "expires_at": None, "fallback_channel": None,
        "requested_at": datetime.now(timezone.utc), "metadata": {},
    }


async def produce_requests(settings: Settings, run: uuid.UUID, n: int, rate: float | None,
                           channels: list[str]) -> dict[str, float]:
    """Send N requests as a user's service would; returns the notification ids ingest will stamp,
    each with its request's produce time (epoch ms)."""
    serde = default_serde()
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5,
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


def bench_tenant(run: uuid.UUID) -> str:
    return f"bench-{run.hex[:8]}"


def throughput(received_ms: Collection[float], started_ms: float) -> float:
    """Deliveries per second from the start to the last one received."""
    wall_s = (max(received_ms, default=started_ms) - started_ms) / 1000
    return round(len(received_ms) / wall_s, 1) if wall_s > 0 else 0.0


def latencies(tally: Tally, requested: dict[str, float]) -> list[float]:
    return [received - requested[nid] for nid, received in tally.first_seen.items()]


def channel_summary(tally: Tally, requested: dict[str, float], started_ms: float) -> dict[str, Any]:
    """One channel's figures: every request asked for it, and each bench user has one address on it."""
    delivered = len(tally.first_seen)
    return {"delivered": delivered, "lost": len(requested) - delivered, "duplicates": tally.duplicates,
            "throughput_per_s": throughput(list(tally.first_seen.values()), started_ms),
            "latency_ms": quantiles(latencies(tally, requested))}


def summary(tallies: dict[str, Tally], requested: dict[str, float], started_ms: float) -> dict[str, Any]:
    """The delivery figures over every channel (README.md, Benchmark), and each channel's."""
    channels = {name: channel_summary(tally, requested, started_ms) for name, tally in tallies.items()}
    received = [ms for tally in tallies.values() for ms in tally.first_seen.values()]
    return {
        "notifications": len(requested),
        "delivered": sum(c["delivered"] for c in channels.values()),
        "lost": sum(c["lost"] for c in channels.values()),
        "duplicates": sum(c["duplicates"] for c in channels.values()),
        "throughput_per_s": throughput(received, started_ms),
        "latency_ms": quantiles([ms for tally in tallies.values() for ms in latencies(tally, requested)]),
        "channels": channels,
    }


def reached(tallies: dict[str, Tally]) -> int:
    """The requests delivered on at least one channel: those the CPU per notification is shared by."""
    return len(set().union(*(tally.first_seen for tally in tallies.values())))


async def run_bench(settings: Settings, n: int, rate: float | None, channels: list[str], idle_timeout: float,
                    progress: Any = None) -> dict[str, Any]:
    put_template(channels)
    run = uuid.uuid4()
    if NEEDS_CONTACTS & set(channels):
        publish_contacts(settings, bench_tenant(run), min(n, USERS))
    folded_by = time.monotonic() + FOLD_S
    raw_per_s = await raw_hop(settings, min(max(n, 5000), 50_000))
    await asyncio.sleep(max(0.0, folded_by - time.monotonic()))
    followers = await Followers.start(settings, channels)
    processes = herald_processes(settings)
    cpu_before = cpu_seconds(processes)
    started_ms = time.time() * 1000
    requested = await produce_requests(settings, run, n, rate, channels)
    tallies = {channel: Tally(set(requested)) for channel in channels}
    expected = n * len(channels)
    last_progress, last_count = time.monotonic(), 0
    while last_count < expected and time.monotonic() - last_progress < idle_timeout:
        await asyncio.sleep(0.5)
        if (count := await followers.poll(tallies)) > last_count:
            last_count, last_progress = count, time.monotonic()
            if progress:
                progress(last_count, expected)
    await asyncio.sleep(0.5)
    await followers.poll(tallies)  # late duplicates
    await followers.stop()
    cpu = cpu_by_role(processes, cpu_before, cpu_seconds(processes))
    requests_reached = reached(tallies)
    await asyncio.sleep(settings.sink_flush_seconds + 2)  # the sink's last batch
    rows, stages = stage_figures(settings, bench_tenant(run))

    def per_notification(cpu_s: float) -> float:
        return round(cpu_s * 1e6 / requests_reached, 1) if requests_reached else 0.0

    figures = summary(tallies, requested, started_ms)
    return {
        **{k: v for k, v in figures.items() if k != "channels"},
        "raw_hop_per_s": round(raw_per_s, 1),
        "cpu_us_per_notification": per_notification(sum(cpu.values())),
        "cpu_us_per_notification_by_stage": {role: per_notification(seconds) for role, seconds in cpu.items()},
        "clickhouse_rows": rows,
        "worker_rss_mb": round(rss_mb(list(processes)), 1),
        "stages": stages,
        "channels": figures["channels"],
    }
