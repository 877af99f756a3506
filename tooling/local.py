"""`herald up` / `herald down`: the whole local stack in the background, each piece ready before the next.

Kafka and ClickHouse come from deploy/local's scripts; the mailbox (local SMTP provider), the stage
workers and the gateway are Herald's own processes, with pid files in <data_dir>/run and logs in
<data_dir>/logs.
"""

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from clickhouse_driver.errors import NetworkError, SocketTimeoutError
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from streams.kafka_clients import client_kwargs
from streams.settings import REPO_ROOT, Settings

SCRIPTS = REPO_ROOT / "deploy" / "local"
HERALD_PROCESSES = ("mailbox", "peers", "workers", "gateway")
# One readiness probe must not outlast the wait loop's pace (kafka-python waits 30 s by default).
PROBE_TIMEOUT_MS = 5000

T = TypeVar("T")


class NotReady(RuntimeError):
    """A piece of the local stack did not come up; the message says what was awaited and where the logs are."""


def not_ready_yet(exc: Exception) -> bool:
    """True when `exc` only means a server is still coming up, so the answer is to ask again later.

    kafka-python marks those errors retriable: a brand-new broker has no group coordinator until the
    first FindCoordinator creates __consumer_offsets (CoordinatorNotAvailable), a coordinator loads
    its groups after a restart (CoordinatorLoadInProgress, NotCoordinator), a node or the controller
    is not ready, a connection is refused or times out. ClickHouse: network errors and timeouts.
    """
    if isinstance(exc, KafkaError):
        return exc.retriable
    return isinstance(exc, (OSError, NetworkError, SocketTimeoutError))


def herald(*args: str) -> list[str]:
    return [sys.executable, "-m", "tooling.cli", *args]


def stage_names() -> list[str]:
    from agents.registry import STAGES

    return list(STAGES)


def worker_groups(settings: Settings) -> list[str]:
    """Every stage's consumer group, from the stage registry."""
    from agents.registry import STAGES

    return [spec.group_id(settings) for spec in STAGES.values()]


def port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def gateway_healthy(settings: Settings) -> bool:
    try:
        return httpx.get(f"http://{settings.gateway_host}:{settings.gateway_port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def workers_ready(settings: Settings) -> bool:
    """Every stage's consumer group has a member and a settled assignment.

    False, not an error, while the broker cannot tell yet (see not_ready_yet).
    """
    logging.getLogger("kafka.admin").setLevel(logging.ERROR)  # it cannot parse Faust's member metadata
    try:
        admin = KafkaAdminClient(**client_kwargs(settings), client_id="herald-up",
                                 bootstrap_timeout_ms=PROBE_TIMEOUT_MS, request_timeout_ms=PROBE_TIMEOUT_MS)
        try:
            groups = admin.describe_groups(worker_groups(settings))
        finally:
            admin.close()
    except Exception as exc:
        if not_ready_yet(exc):
            return False
        raise
    return all(group["group_state"] == "Stable" and group["members"] for group in groups.values())


def pid_file(settings: Settings, name: str) -> Path:
    return settings.data_dir / "run" / f"{name}.pid"


def running_pid(settings: Settings, name: str) -> int | None:
    path = pid_file(settings, name)
    try:
        pid = int(path.read_text())
        # A child of this very process (a test that ran start_herald itself) lingers as a zombie,
        # which kill(pid, 0) still finds, until its exit status is collected.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        path.unlink(missing_ok=True)
        return None


def log_tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.is_file() else ""


def wait_until(ready: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    """Return once `ready()`; NotReady after `timeout` seconds, naming `what` was awaited and the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise NotReady(f"gave up after {timeout:.0f}s waiting for {what}; logs: {log}\n{log_tail(log)}")


def retry_until_ready(action: Callable[[], T], timeout: float, what: str, logs: Path) -> T:
    """`action()`, tried again while it fails only because a server is still coming up (not_ready_yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except Exception as exc:
            if not not_ready_yet(exc):
                raise
            if time.monotonic() >= deadline:
                raise NotReady(f"gave up after {timeout:.0f}s waiting for {what} (last error: {exc}); "
                               f"logs in {logs}") from exc
        time.sleep(1)


def start_process(settings: Settings, name: str, command: list[str], ready: Callable[[], bool], timeout: float,
                  what: str) -> None:
    """Start `command` in the background unless it runs already; return once `ready()`.

    `what` says what `ready` waits for, for the message when it never comes.
    """
    log = settings.data_dir / "logs" / f"{name}.log"
    if running_pid(settings, name) is None:
        for directory in (log.parent, pid_file(settings, name).parent):
            directory.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        pid_file(settings, name).write_text(str(process.pid))

    def ready_while_running() -> bool:
        if running_pid(settings, name) is None:  # no use waiting out the timeout
            raise NotReady(f"{name} exited while starting; logs: {log}\n{log_tail(log)}")
        return ready()

    wait_until(ready_while_running, timeout, f"{name}: {what}", log)


def stop_process(settings: Settings, name: str, timeout: float = 30) -> bool:
    pid = running_pid(settings, name)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_pid(settings, name) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if running_pid(settings, name) is not None:
        os.killpg(pid, signal.SIGKILL)
    pid_file(settings, name).unlink(missing_ok=True)
    return True


def infrastructure(action: str) -> None:
    for script in ("kafka.sh", "clickhouse.sh"):
        subprocess.run([str(SCRIPTS / script), action], check=True)


def mailbox_dir(settings: Settings) -> Path:
    return settings.data_dir / "mail"


def start_mailbox(settings: Settings) -> None:
    start_process(settings, "mailbox", herald("mailbox"), lambda: port_open(settings.smtp_host, settings.smtp_port), 30,
                  f"SMTP connections accepted on {settings.smtp_host}:{settings.smtp_port}")


def start_peers(settings: Settings) -> None:
    start_process(settings, "peers", herald("peers"), lambda: port_open(settings.peers_host, settings.peers_port), 30,
                  f"HTTP connections accepted on {settings.peers_host}:{settings.peers_port}")


def start_herald(settings: Settings, say: Callable[[str], None]) -> list[str]:
    """Start the mailbox, the provider peers, the workers and the gateway unless they run; returns the names started."""
    started = [name for name in HERALD_PROCESSES if running_pid(settings, name) is None]
    start_mailbox(settings)
    say(f"mailbox (SMTP) on {settings.smtp_host}:{settings.smtp_port}, mail in {mailbox_dir(settings)}")
    start_peers(settings)
    say(f"provider peers on {settings.peers_host}:{settings.peers_port} (APNs :{settings.push.apns.port}), "
        f"receipts in {settings.data_dir / 'peers'}")
    start_process(settings, "workers", herald("worker", "--stage", "all"), lambda: workers_ready(settings), 180,
                  f"every stage's consumer group Stable with members, on Kafka {settings.kafka_bootstrap}")
    say(f"workers: {', '.join(stage_names())}")
    start_process(settings, "gateway", herald("gateway"), lambda: gateway_healthy(settings), 60,
                  f"http://{settings.gateway_host}:{settings.gateway_port}/health to answer 200")
    say(f"gateway on http://{settings.gateway_host}:{settings.gateway_port}")
    return started


def up(settings: Settings, say: Callable[[str], None]) -> None:
    from sinks.migrate import migrate_up
    from streams.topics import create_topics

    infrastructure("start")
    say("Kafka and ClickHouse are up")
    # The scripts return once a server answers; its first requests may still fail for a moment.
    retry_until_ready(lambda: create_topics(settings), 60, f"Kafka {settings.kafka_bootstrap} to create the topics",
                      settings.data_dir / "kafka" / "logs")
    # A refused connection is expected here for a moment: not worth clickhouse-driver's traceback.
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)
    retry_until_ready(lambda: migrate_up(settings), 60,
                      f"ClickHouse {settings.clickhouse_host}:{settings.clickhouse_port} to run the migrations",
                      settings.data_dir / "clickhouse" / "logs")
    say("topics and tables are in place")
    start_herald(settings, say)


def down(settings: Settings, say: Callable[[str], None]) -> None:
    for name in reversed(HERALD_PROCESSES):
        if stop_process(settings, name):
            say(f"{name} stopped")
    infrastructure("stop")
    say("Kafka and ClickHouse stopped")
