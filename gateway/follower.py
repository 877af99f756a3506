"""A log the gateway folds while it runs (the inbox, the tenants' API keys).

It starts in the background and retries, so the rest of the gateway serves while Kafka is away;
what depends on the fold answers 503 until it caught up (its `ready` event).
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiohttp import web
from aiokafka.errors import KafkaError

from streams.tables import FoldedTable

log = logging.getLogger(__name__)

FOLLOW_RETRY_S = 5.0


class Follower:
    def __init__(self, make_log: Callable[[], FoldedTable]) -> None:
        self.make_log = make_log
        self.log: FoldedTable | None = None
        self.task: asyncio.Task[None] | None = None

    async def on_startup(self, app: web.Application) -> None:
        self.task = asyncio.create_task(self.follow())

    async def follow(self) -> None:
        while True:
            folded = self.make_log()
            try:
                await folded.start()
            except (KafkaError, OSError, RuntimeError) as exc:  # Kafka away, or the topic not created yet
                log.warning("cannot follow %s yet (%s: %s); retrying in %.0f s",
                            folded.spec.name, type(exc).__name__, exc, FOLLOW_RETRY_S)
                with contextlib.suppress(Exception):
                    await folded.stop()
                await asyncio.sleep(FOLLOW_RETRY_S)
                continue
            self.log = folded
            return

    async def on_cleanup(self, app: web.Application) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.log is not None:
            await self.log.stop()
