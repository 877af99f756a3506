"""Running one declared stage as a Faust worker."""

import logging
from typing import Any

from faust import Worker

from streams.logs import use_json_logs
from streams.runtime import StageRuntime
from streams.settings import get_settings


class StageWorker(Worker):
    def __init__(self, *services: Any, stage: str, json_logs: bool, **kwargs: Any) -> None:
        super().__init__(*services, **kwargs)
        self.stage = stage
        self.json_logs = json_logs

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # Faust's terminal spinner sets the root logger to DEBUG so it can spin on every record:
        # every debug call in aiokafka and Faust then builds a record, a third of a stage's CPU.
        self.spinner = None
        if self.json_logs:
            use_json_logs(self.stage)


def run_stage(name: str, loglevel: str) -> None:
    from agents.registry import STAGES

    settings = get_settings()
    runtime = StageRuntime(STAGES[name], settings)
    StageWorker(runtime.app, *runtime.services, stage=name, json_logs=settings.log_format == "json",
                loglevel=loglevel, quiet=True).execute_from_commandline()
