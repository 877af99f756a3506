"""Running one stage as a Faust worker."""

import importlib
import logging

from faust import Worker

# Stage name → the module whose import defines its Faust agents and services.
STAGES = {
    "ingest": "agents.ingest",
    "validate": "agents.validate",
    "template": "agents.template",
    "route": "agents.route",
    "deliver": "agents.deliver",
    "track": "agents.track",
}


class StageWorker(Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # Faust's terminal spinner sets the root logger to DEBUG so it can spin on every record:
        # every debug call in aiokafka and Faust then builds a record, a third of a stage's CPU.
        self.spinner = None


def run_stage(name: str, loglevel: str) -> None:
    module = importlib.import_module(STAGES[name])
    StageWorker(module.stage.app, *module.stage.services, loglevel=loglevel, quiet=True).execute_from_commandline()
