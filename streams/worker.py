"""Running one declared stage as a Faust worker."""

import logging

from faust import Worker

from streams.runtime import StageRuntime
from streams.settings import get_settings


class StageWorker(Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # Faust's terminal spinner sets the root logger to DEBUG so it can spin on every record:
        # every debug call in aiokafka and Faust then builds a record, a third of a stage's CPU.
        self.spinner = None


def run_stage(name: str, loglevel: str) -> None:
    from agents.registry import STAGES  # late: the registry imports every stage and its libraries

    runtime = StageRuntime(STAGES[name], get_settings())
    StageWorker(runtime.app, *runtime.services, loglevel=loglevel, quiet=True).execute_from_commandline()
