"""`herald worker --stage all`: one child process per stage, restarted when it dies, stopped together."""

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


def start_stage(stage: str, loglevel: str) -> subprocess.Popen[bytes]:
    """A stage's worker, with a static group membership id of its own: started again after a crash,
    it takes its partitions back at once rather than after the session timeout."""
    instance = f"{socket.gethostname()}-{stage}"
    return subprocess.Popen(stage_command(stage, loglevel), env={**os.environ, "HERALD_WORKER_INSTANCE_ID": instance})


def run_stage_processes(stages: list[str], loglevel: str) -> int:
    """Supervise one worker process per stage until SIGTERM/SIGINT.

    A stage that dies (a crash, the OOM killer, `kill -9`) is started again, as Kubernetes would
    restart its pod: its Kafka offsets and changelogs let it resume where it stopped.
    """
    children = {stage: start_stage(stage, loglevel) for stage in stages}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for stage, child in children.items():
            code = child.poll()
            if code is not None and not stopping:
                print(f"herald: the {stage} worker exited with {code}; starting it again", file=sys.stderr, flush=True)
                time.sleep(RESTART_DELAY_S)
                children[stage] = start_stage(stage, loglevel)
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
