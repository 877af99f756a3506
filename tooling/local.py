"""`herald up` / `herald down`: the whole local stack in the background, each piece ready before the next.

Kafka and ClickHouse come from deploy/local's scripts; the mailbox (local SMTP provider), the stage
workers and the gateway are Herald's own processes, with pid files in <data_dir>/run and logs in
<data_dir>/logs.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from kafka.admin import KafkaAdminClient

from streams.settings import REPO_ROOT, Settings

SCRIPTS = REPO_ROOT / "deploy" / "local"
HERALD_PROCESSES = ("mailbox", "workers", "gateway")
WORKER_GROUPS = ("herald-ingest", "herald-validate", "herald-template", "herald-route", "herald-deliver",
                 "herald-clickhouse-sink")


def herald(*args: str) -> list[str]:
    return [sys.executable, "-m", "tooling.cli", *args]


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
    """Every stage's consumer group has a member and a settled assignment."""
    logging.getLogger("kafka.admin").setLevel(logging.ERROR)  # it cannot parse Faust's member metadata
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="herald-up")
    try:
        groups = admin.describe_groups(list(WORKER_GROUPS))
        return all(group["group_state"] == "Stable" and group["members"] for group in groups.values())
    finally:
        admin.close()


def pid_file(settings: Settings, name: str) -> Path:
    return settings.data_dir / "run" / f"{name}.pid"


def running_pid(settings: Settings, name: str) -> int | None:
    path = pid_file(settings, name)
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        path.unlink(missing_ok=True)
        return None


def wait_until(ready: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s\n{tail}")


def start_process(settings: Settings, name: str, command: list[str], ready: Callable[[], bool], timeout: float) -> None:
    """Start `command` in the background unless it runs already; return once `ready()`."""
    log = settings.data_dir / "logs" / f"{name}.log"
    if running_pid(settings, name) is None:
        for directory in (log.parent, pid_file(settings, name).parent):
            directory.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        pid_file(settings, name).write_text(str(process.pid))
    wait_until(ready, timeout, name, log)


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
    start_process(settings, "mailbox", herald("mailbox"), lambda: port_open(settings.smtp_host, settings.smtp_port), 30)


def start_herald(settings: Settings, say: Callable[[str], None]) -> list[str]:
    """Start the mailbox, the workers and the gateway unless they run; returns the names started."""
    started = [name for name in HERALD_PROCESSES if running_pid(settings, name) is None]
    start_mailbox(settings)
    say(f"mailbox (SMTP) on {settings.smtp_host}:{settings.smtp_port}, mail in {mailbox_dir(settings)}")
    start_process(settings, "workers", herald("worker", "--stage", "all"), lambda: workers_ready(settings), 180)
    say("workers: ingest, validate, template, route, deliver, track")
    start_process(settings, "gateway", herald("gateway"), lambda: gateway_healthy(settings), 60)
    say(f"gateway on http://{settings.gateway_host}:{settings.gateway_port}")
    return started


def up(settings: Settings, say: Callable[[str], None]) -> None:
    from sinks.migrate import migrate_up
    from streams.topics import create_topics

    infrastructure("start")
    say("Kafka and ClickHouse are up")
    create_topics(settings)
    migrate_up(settings)
    say("topics and tables are in place")
    start_herald(settings, say)


def down(settings: Settings, say: Callable[[str], None]) -> None:
    for name in reversed(HERALD_PROCESSES):
        if stop_process(settings, name):
            say(f"{name} stopped")
    infrastructure("stop")
    say("Kafka and ClickHouse stopped")
