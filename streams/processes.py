"""Run several stage workers as child processes and stop them together (`herald worker --stage all`)."""

import signal
import subprocess
import sys
import time
from types import FrameType


def stage_command(stage: str, loglevel: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", "worker", "--stage", stage, "--loglevel", loglevel]


def run_stage_processes(stages: list[str], loglevel: str) -> int:
    """Start one worker process per stage; when one exits or we are signalled, stop the rest."""
    children = {stage: subprocess.Popen(stage_command(stage, loglevel)) for stage in stages}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = 0
    while not stopping:
        exited = {stage: child.poll() for stage, child in children.items() if child.poll() is not None}
        if exited:
            stage, exit_code = next(iter(exited.items()))
            print(f"herald: the {stage} worker exited with {exit_code}; stopping the others", file=sys.stderr)
            break
        time.sleep(0.5)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    for child in children.values():
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    return exit_code
