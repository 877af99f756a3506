"""A log the gateway folds while it runs (the inbox; templates, preferences and cancellations for the
HTTP API). It starts in the background and retries, so the rest of the gateway serves while Kafka is
away; what reads the table answers 503 until it caught up (`ready`)."""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from aiohttp import web
from aiokafka.errors import KafkaError

from streams.tables import FoldedTable

log = logging.getLogger(__name__)

FOLLOW_RETRY_S = 5.0
Table = TypeVar("Table", bound=FoldedTable)


class Follower(Generic[Table]):
    def __init__(self, make: Callable[[], Table]) -> None:
        self.make = make
        self.table: Table | None = None
        self.task: asyncio.Task[None] | None = None

    def ready(self) -> Table | None:
        """The table once it caught up with its log; None before."""
        return self.table if self.table is not None and self.table.ready.is_set() else None

    async def on_startup(self, app: web.Application) -> None:
        self.task = asyncio.create_task(self.follow())

    async def follow(self) -> None:
        while True:
            table = self.make()
            try:
                await table.start()
            except (KafkaError, OSError, RuntimeError) as exc:  # Kafka away, or the topic not created yet
                log.warning("cannot follow %s yet (%s: %s); retrying in %.0f s",
                            table.spec.name, type(exc).__name__, exc, FOLLOW_RETRY_S)
                with contextlib.suppress(Exception):
                    await table.stop()
                await asyncio.sleep(FOLLOW_RETRY_S)
                continue
            self.table = table
            return

    async def on_cleanup(self, app: web.Application) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.table is not None:
            await self.table.stop()

    def attach(self, app: web.Application) -> None:
        app.on_startup.append(self.on_startup)
        app.on_cleanup.append(self.on_cleanup)
