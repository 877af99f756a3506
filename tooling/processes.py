"""`herald worker --stage all`: one child process per stage (or `worker_replicas` of them), restarted
when it dies, stopped together."""

import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

RESTART_DELAY_S = 1.0


def stage_command(stage: str, loglevel: str) -> list[str]:
    return [sys.executable, "-m", "tooling.cli", "worker", "--stage", stage, "--loglevel", loglevel]


def instance_id(stage: str, replica: int = 0) -> str:
    return f"{socket.gethostname()}-{stage}" + (f"-{replica}" if replica else "")


def start_stage(stage: str, loglevel: str, replica: int = 0) -> subprocess.Popen[bytes]:
    """A stage's worker, with a static group membership id of its own: started again after a crash,
    it takes its partitions back at once rather than after the session timeout."""
    # One process, one worker: the child must not supervise replicas of its own.
    env = {**os.environ, "HERALD_WORKER_INSTANCE_ID": instance_id(stage, replica), "HERALD_WORKER_REPLICAS": "1"}
    return subprocess.Popen(stage_command(stage, loglevel), env=env)


def forget_static_members(stages: list[str], replicas: int = 1) -> None:
    """Take this host's static members out of the stages' groups (KIP-345's admin LeaveGroup) before
    the supervisor starts them. A static member that rejoins gets its old assignment back without a
    rebalance, even when its subscription changed: after an upgrade that gives deliver a new channel
    topic, that topic would never be assigned. A crashed worker restarted by the loop below keeps
    its id and its fast return; a new supervisor (`herald up`, a deploy) starts from a fresh join."""
    from kafka import KafkaAdminClient
    from kafka.admin import MemberToRemove
    from kafka.errors import KafkaError

    from streams.kafka_clients import client_kwargs
    from streams.settings import get_settings
    from streams.stage import stage_app_id

    settings = get_settings()
    admin = KafkaAdminClient(**client_kwargs(settings), client_id="herald-supervisor")
    try:
        for stage in stages:
            members = [MemberToRemove(group_instance_id=instance_id(stage, replica)) for replica in range(replicas)]
            for member in members:  # one call each: a member the group does not have fails the whole call
                try:
                    admin.remove_group_members(stage_app_id(settings, stage), [member])
                except KafkaError:
                    pass  # no such group or member yet: nothing to forget
    finally:
        admin.close()


def run_stage_processes(stages: list[str], loglevel: str, replicas: int = 1) -> int:
    """Supervise `replicas` worker processes per stage until SIGTERM/SIGINT.

    A stage that dies (a crash, the OOM killer, `kill -9`) is started again, as Kubernetes would
    restart its pod: its Kafka offsets and changelogs let it resume where it stopped.
    """
    forget_static_members(stages, replicas)
    children = {(stage, replica): start_stage(stage, loglevel, replica) for stage in stages for replica in range(replicas)}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for (stage, replica), child in children.items():
            code = child.poll()
            if code is not None and not stopping:
                print(f"herald: the {stage} worker exited with {code}; starting it again", file=sys.stderr, flush=True)
                time.sleep(RESTART_DELAY_S)
                children[(stage, replica)] = start_stage(stage, loglevel, replica)
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    for child in children.values():
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0
