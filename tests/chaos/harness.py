"""What the chaos scenarios do to a private Herald stack (tests/stack.py) and read back from it.

Sizes: HERALD_CHAOS=short (the default; `make test`) or long (`make chaos`); HERALD_CHAOS=off skips
the suite. HERALD_CHAOS_SEED makes the random choices (which stage to kill) repeatable; every
summary names the seed it ran with.

Every scenario reports one line of JSON: printed (visible with `pytest -s`), appended to
`<data_dir>/chaos/results.jsonl` of the data directory the suite was started with (not the private
stack's, which is temporary), and repeated in pytest's terminal summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaProducer

from sinks.clickhouse_client import connect
from streams.settings import REPO_ROOT, Settings
from tests.integration.pipeline_helpers import Mail, group_sizes, produce, put_template, request, tenant_key
from tests.stack import environment
from tooling.bench import herald_processes
from tooling.local import mailbox_dir, start_herald, start_mailbox, stop_process, up, workers_ready
from tooling.mailbox import FAULTS, RECEIPTS
from tooling.processes import stage_command

MODE = os.environ.get("HERALD_CHAOS", "short").strip().lower() or "short"
if MODE not in ("short", "long", "off"):
    raise ValueError(f"HERALD_CHAOS={MODE!r}: short, long or off")
LONG = MODE == "long"
SEED = int(os.environ.get("HERALD_CHAOS_SEED") or random.SystemRandom().randrange(2**31))

TEMPLATE = "chaos"
# What every delivered notification's timeline holds (validate emits no event for a valid one).
LIFECYCLE = ("accepted", "rendered", "routed", "sent")
DEPLOY = REPO_ROOT / "deploy" / "local"


def sized(short: Any, long: Any) -> Any:
    """The short or the long version's figure."""
    return long if LONG else short


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Load(threading.Thread):
    """Produces requests to herald.requests at `rate` per second (slices every 0.1 s), as a service
    would, through pipeline_helpers.produce; `produced` holds (notification id, epoch s) in order."""

    def __init__(self, producer: KafkaProducer, requests: list[dict[str, Any]], rate: float) -> None:
        super().__init__(daemon=True)
        self.producer, self.requests, self.rate = producer, requests, rate
        self.produced: list[tuple[str, float]] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    @property
    def ids(self) -> list[str]:
        return [nid for nid, _ in self.produced]

    def run(self) -> None:
        step = max(1, round(self.rate / 10))
        started = time.monotonic()
        try:
            for first in range(0, len(self.requests), step):
                if self.stopping.is_set():
                    return
                ahead = first / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
                ids = produce(self.producer, self.requests[first:first + step])
                at = time.time()
                self.produced.extend((nid, at) for nid in ids)
        except BaseException as exc:  # re-raised by finish()
            self.error = exc

    def finish(self, timeout: float | None = None) -> list[str]:
        """Wait for every request to be produced; the ids."""
        self.join(timeout)
        if self.error:
            raise self.error
        assert not self.is_alive(), "the load did not finish producing"
        return self.ids

    def stop(self) -> list[str]:
        """Stop producing; the ids produced so far."""
        self.stopping.set()
        return self.finish(30)


@dataclass
class Posted:
    key: str
    sent_at: float
    answered_at: float = 0.0
    status: int | None = None  # None: no HTTP answer (error holds what happened)
    notification_id: str | None = None
    error: str | None = None


class GatewayPoster(threading.Thread):
    """POSTs one notification a tick to the gateway until stopped, each request on its own (a slow
    answer does not hold up the next one); `posted` records every answer."""

    def __init__(self, settings: Settings, tenant: str, rate: float, timeout_s: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.url = f"http://{settings.gateway_host}:{settings.gateway_port}/v1/notifications"
        self.headers = {"X-API-Key": tenant_key(settings, tenant)}  # the body's tenant must be its key's
        self.tenant, self.rate, self.timeout_s = tenant, rate, timeout_s
        self.posted: list[Posted] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self.main())

    async def main(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            tasks = []
            i = 0
            while not self.stopping.is_set():
                tasks.append(asyncio.create_task(self.post(client, i)))
                i += 1
                await asyncio.sleep(1 / self.rate)
            await asyncio.gather(*tasks)

    async def post(self, client: httpx.AsyncClient, i: int) -> None:
        key = f"gw-{i}"
        posted = Posted(key, time.time())
        self.posted.append(posted)
        body = {"tenant": self.tenant, "template_id": TEMPLATE, "idempotency_key": key,
                "recipient": {"user_id": f"user-{key}", "email": f"{key}@example.com"}, "variables": {"n": key}}
        try:
            response = await client.post(self.url, json=body, headers=self.headers)
            posted.status = response.status_code
            if response.status_code == 202:
                posted.notification_id = response.json()["notification_id"]
        except httpx.HTTPError as exc:
            posted.error = f"{type(exc).__name__}: {exc}"
        posted.answered_at = time.time()

    def finish(self) -> list[Posted]:
        self.stopping.set()
        self.join()
        return self.posted


@dataclass
class LogMark:
    """A log file from a mark on (the offset it had when marked)."""

    path: Path
    offset: int = 0

    def mark(self) -> "LogMark":
        return type(self)(self.path, self.path.stat().st_size if self.path.exists() else 0)

    def text(self) -> str:
        if not self.path.exists():
            return ""
        with self.path.open(errors="replace") as log:
            log.seek(min(self.offset, self.path.stat().st_size))
            return log.read()


class BrokerLog(LogMark):
    """The private broker's server.log: the group coordinator's rebalances."""

    REBALANCE = re.compile(r"Preparing to rebalance group (\S+) in state \S+ with old generation \d+ "
                           r"\(reason: (.*)\)\. \(")

    def rebalances(self) -> list[tuple[str, str]]:
        """(group, reason) of every rebalance logged since the mark."""
        return [(m[1], m[2]) for m in self.REBALANCE.finditer(self.text())]


class SupervisorLog(LogMark):
    """The supervisor's log (`herald worker --stage all`): the workers it had to start again."""

    EXITED = re.compile(r"the (\S+) worker exited with (-?\d+); starting it again")

    def exits(self) -> list[tuple[str, int]]:
        """(stage, exit code) of every worker that died since the mark; -9 is a SIGKILL."""
        return [(m[1], int(m[2])) for m in self.EXITED.finditer(self.text())]

    def crashes(self) -> list[str]:
        """The stages whose worker exited by itself (not SIGKILLed) since the mark."""
        return [stage for stage, code in self.exits() if code != -signal.SIGKILL]


def reason_kind(reason: str) -> str:
    """A rebalance reason, without member ids: what made the group rebalance."""
    if "LeaveGroup" in reason:
        return "leave"
    if "expired" in reason or "heartbeat" in reason.lower() or "session" in reason.lower():
        return "session_expired"
    if "rebalance timeout" in reason.lower() or "did not rejoin" in reason:
        return "rebalance_timeout"
    if "join" in reason.lower() or "Adding new" in reason or "Updating metadata" in reason:
        return "join"
    return re.sub(r"[0-9a-f-]{36}", "…", reason)[:80]


@dataclass
class Receipts:
    """The mailbox's received.jsonl, followed: the notification ids of the submissions it recorded
    from `offset` on (each poll reads only what was added since the last)."""

    path: Path
    offset: int = 0
    seen: set[str] = field(default_factory=set)

    @classmethod
    def from_now(cls, path: Path) -> Receipts:
        return cls(path, path.stat().st_size if path.exists() else 0)

    def poll(self) -> set[str]:
        if self.path.exists():
            with self.path.open() as lines:
                lines.seek(self.offset)
                while (line := lines.readline()).endswith("\n"):  # a line still being written: next time
                    self.offset = lines.tell()
                    self.seen.add(json.loads(line)["notification_id"])
        return self.seen


@dataclass
class Tally:
    """What the mailbox received for a set of notifications."""

    notifications: int
    delivered: int
    lost: int
    stored_twice: int
    resends: int

    @classmethod
    def of(cls, mail: Mail) -> Tally:
        stored, repeats = mail.tally()
        return cls(len(mail.ids), len(stored), len(mail.ids) - len(stored),
                   sum(1 for count in stored.values() if count > 1), sum(repeats.values()))


@dataclass
class ChaosStack:
    """A private stack that `up` started, and the tools the scenarios use on it."""

    settings: Settings
    results: Path
    records: list[dict[str, Any]]
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    _producer: KafkaProducer | None = None
    extras: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def producer(self) -> KafkaProducer:
        """A plain kafka-python producer, as a user's service would have."""
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                           linger_ms=10, batch_size=256 * 1024)
        return self._producer

    def close(self) -> None:
        stop_workers(self.extras, timeout=10)
        if self._producer is not None:
            self._producer.close(timeout=10)

    def say(self, line: str) -> None:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {line}", flush=True)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """One query on a connection of its own (ClickHouse may have been restarted since the last one)."""
        client = connect(self.settings)
        try:
            return client.execute(sql, params or {})
        finally:
            client.disconnect()

    def broker_log(self) -> BrokerLog:
        """The broker's log from now on."""
        return BrokerLog(self.settings.data_dir / "kafka" / "logs" / "server.log").mark()

    def supervisor_log(self) -> SupervisorLog:
        """The supervisor's log from now on."""
        return SupervisorLog(self.settings.data_dir / "logs" / "workers.log").mark()

    # --- the stack -------------------------------------------------------------------------------

    def ensure_up(self) -> None:
        """Whatever an earlier scenario left stopped is started again (all idempotent), and every
        stage's group is settled before a scenario begins."""
        up(self.settings, lambda line: None)
        deadline = time.monotonic() + 180
        while not workers_ready(self.settings):
            assert time.monotonic() < deadline, "the stage workers' groups did not settle in 180 s"
            time.sleep(1)

    def script(self, name: str, action: str) -> float:
        """deploy/local/<name>.sh <action> on this stack; seconds it took."""
        started = time.monotonic()
        subprocess.run([str(DEPLOY / f"{name}.sh"), action], check=True, capture_output=True, timeout=180)
        return time.monotonic() - started

    def restart_workers(self, variables: Mapping[str, str | None]) -> None:
        """The workers (`herald worker --stage all`) stopped, then started with these environment
        variables (Faust reads e.g. BROKER_SESSION_TIMEOUT from it). The supervisor gives them the
        same static membership ids as before, so each takes its predecessor's place at once."""
        stop_process(self.settings, "workers")
        with environment(variables):
            start_herald(self.settings, lambda line: None)

    @contextmanager
    def mailbox_faults(self, fail_rate: float, timeout_rate: float) -> Iterator[None]:
        """The mailbox restarted with fault injection (settings mailbox_*), and again without after."""
        stop_process(self.settings, "mailbox")
        try:
            with environment({"HERALD_MAILBOX_FAIL_RATE": str(fail_rate),
                              "HERALD_MAILBOX_TIMEOUT_RATE": str(timeout_rate)}):
                start_mailbox(self.settings)
            yield
        finally:
            stop_process(self.settings, "mailbox")
            start_mailbox(self.settings)

    def injected_faults(self) -> Counter[str]:
        """Faults the mailbox injected so far, by kind and command (e.g. "fail/RCPT")."""
        path = mailbox_dir(self.settings) / FAULTS
        if not path.exists():
            return Counter()
        return Counter(f"{f['kind']}/{f['command']}" for f in map(json.loads, path.read_text().splitlines()))

    # --- stage workers -------------------------------------------------------------------------------

    def stage_pids(self) -> dict[str, int]:
        """The supervisor's worker of each stage that runs now (never those of another stack)."""
        return {role: pid for pid, role in herald_processes(self.settings).items() if role != "gateway"}

    def wait_for_worker(self, stage: str, not_pid: int | None = None, timeout: float = 60) -> int:
        """The pid of the stage's worker once there is one (other than `not_pid`)."""
        deadline = time.monotonic() + timeout
        while True:
            pid = self.stage_pids().get(stage)
            if pid is not None and pid != not_pid:
                return pid
            assert time.monotonic() < deadline, f"the supervisor did not restart the {stage} worker in {timeout}s"
            time.sleep(0.1)

    def kill(self, stage: str) -> tuple[int, float]:
        """SIGKILL the stage's worker (the supervisor starts it again); its pid and the time."""
        pid = self.wait_for_worker(stage)
        os.kill(pid, signal.SIGKILL)
        return pid, time.time()

    def extra_worker(self, stage: str, name: str) -> subprocess.Popen[bytes]:
        """One more worker of the stage, outside the supervisor, logging to <data_dir>/logs/<name>.log."""
        log = (self.settings.data_dir / "logs" / f"{name}.log").open("ab")
        try:
            worker = subprocess.Popen(stage_command(stage, "warn"), cwd=REPO_ROOT, stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.extras.append(worker)  # stopped at the end whatever happens
        return worker

    def group_sizes(self, stages: list[str]) -> dict[str, int]:
        from agents.registry import STAGES

        return group_sizes(self.settings.kafka_bootstrap, [STAGES[stage].group_id(self.settings) for stage in stages])

    # --- notifications -------------------------------------------------------------------------------

    def put_template(self) -> None:
        put_template(TEMPLATE, ["n"], "Chaos #{{ n }}", "Notification {{ n }} of a chaos run.")

    def requests(self, tenant: str, n: int, prefix: str = "k") -> list[dict[str, Any]]:
        return [request(tenant, f"{prefix}-{i}", TEMPLATE, f"user-{prefix}-{i % 997}", f"{prefix}{i}@example.com",
                        {"n": str(i)}) for i in range(n)]

    def load(self, tenant: str, n: int, rate: float, prefix: str = "k") -> Load:
        load = Load(self.producer, self.requests(tenant, n, prefix), rate)
        load.start()
        return load

    def mail(self, ids: list[str]) -> Mail:
        return Mail(self.settings, ids)

    def receipts(self, from_now: bool = False) -> Receipts:
        """The mailbox's receipts, followed from the start (or from now on)."""
        path = mailbox_dir(self.settings) / RECEIPTS
        return Receipts.from_now(path) if from_now else Receipts(path)

    def wait_delivered(self, ids: list[str], timeout: float, what: str = "") -> Tally:
        """Wait until each notification reached the mailbox (or the timeout); what it received."""
        wanted, receipts = set(ids), self.receipts()
        deadline = time.monotonic() + timeout
        last, said = -1, 0.0
        while True:
            received = len(wanted & receipts.poll())
            if received >= len(wanted) or time.monotonic() > deadline:
                break
            if received != last and time.monotonic() - said > 15:
                self.say(f"{what}{received}/{len(ids)} delivered")
                last, said = received, time.monotonic()
            time.sleep(1)
        time.sleep(1)  # resends of the last moment
        return Tally.of(self.mail(ids))

    def event_counts(self, tenant: str) -> dict[str, Counter[str]]:
        """notification id → status → lifecycle events in ClickHouse (FINAL: replays collapse)."""
        rows = self.query(
            "SELECT toString(notification_id), status, count() FROM notification_events FINAL "
            "WHERE tenant = %(tenant)s GROUP BY notification_id, status", {"tenant": tenant})
        counts: dict[str, Counter[str]] = {}
        for nid, status, count in rows:
            counts.setdefault(nid, Counter())[status] = count
        return counts

    def timeline_gaps(self, tenant: str, ids: list[str], timeout: float,
                      expected: tuple[str, ...] = LIFECYCLE) -> dict[str, Any]:
        """Wait (at most `timeout`) until every notification has exactly one event of each expected
        status in ClickHouse; the figures: events expected, found, missing, extra."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.event_counts(tenant)
            missing = {nid: [s for s in expected if counts.get(nid, Counter())[s] < 1] for nid in ids}
            missing = {nid: gone for nid, gone in missing.items() if gone}
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(2)
        extra = sum(max(0, counts.get(nid, Counter())[s] - 1) for nid in ids for s in expected)
        found = sum(min(1, counts.get(nid, Counter())[s]) for nid in ids for s in expected)
        return {"events_expected": len(ids) * len(expected), "events_found": found,
                "events_missing": len(ids) * len(expected) - found, "events_extra": extra,
                "timelines_incomplete": len(missing),
                "missing_example": next(iter(missing.items()), None)}

    # --- reporting -------------------------------------------------------------------------------

    def report(self, scenario: str, figures: dict[str, Any], checks: dict[str, tuple[bool, str]],
               verify: bool = True) -> dict[str, tuple[bool, str]]:
        """Print and append the scenario's one-line summary; then assert its checks, unless `verify`
        is false (a scenario split into several tests calls `verify` itself)."""
        failed = [name for name, (ok, _) in checks.items() if not ok]
        record = {"scenario": scenario, "mode": MODE, "seed": SEED, "at": now_iso(), **figures,
                  "passed": not failed, "failed_checks": failed}
        line = json.dumps(record, default=str)
        print(line, flush=True)
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with self.results.open("a") as out:
            out.write(line + "\n")
        self.records.append(record)
        if verify:
            check(checks)
        return checks


def check(checks: dict[str, tuple[bool, str]], names: list[str] | None = None) -> None:
    """Assert the named checks (all by default), saying what failed."""
    failed = [name for name in (names or list(checks)) if not checks[name][0]]
    assert not failed, "; ".join(f"{name}: {checks[name][1]}" for name in failed)


def stop_workers(workers: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM (a graceful leave), then SIGKILL what has not exited after `timeout`."""
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    deadline = time.monotonic() + timeout
    for worker in workers:
        try:
            worker.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def new_tenant(scenario: str) -> str:
    return f"chaos-{scenario}-{uuid.uuid4().hex[:8]}"


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 1)


def poll(ready: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """`ready()` until it is truthy or `timeout` passed; its last value."""
    deadline = time.monotonic() + timeout
    while not (value := ready()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value

