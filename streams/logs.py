"""Log lines as text (default) or as JSON objects (`HERALD_LOG_FORMAT=json`), for a log pipeline.

A JSON line carries the time, level, logger, message, the stage (or "gateway") and, on a line about
one notification, its `notification_id`: code working on one notification sets `NOTIFICATION_ID`
(a context variable, so each of deliver's concurrent sends keeps its own).
"""

import logging
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

NOTIFICATION_ID: ContextVar[str | None] = ContextVar("notification_id", default=None)


class NotificationContext(logging.Filter):
    """Adds the process's stage and the notification being worked on to every record."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.stage = self.process
        record.notification_id = NOTIFICATION_ID.get()
        return True


def use_json_logs(process: str) -> None:
    """Every handler of the root logger writes JSON lines from now on."""
    formatter = JsonFormatter("{asctime}{levelname}{name}{message}{stage}{notification_id}", style="{",
                              rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter)
        handler.addFilter(NotificationContext(process))
