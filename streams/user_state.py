"""Per-user state of a stage, partitioned like the stage's input (route's caps, digest's windows).

Unlike the folded tables (streams/tables.py), which every process reads whole, a worker holds the
state of the users whose input partitions it is assigned, and no one else's. The changelog is a
compacted topic with as many partitions as the input: the state written while handling a record of
input partition p goes to changelog partition p, keyed by the user key (`<tenant>/<user_id>`), and
holds that user's whole value (a small JSON document; a tombstone when it is empty). When a worker
is handed input partition p, it reads changelog partition p to its end before it handles a record
from p; when p is taken away, it forgets p's users. Because the inputs are keyed (and bundled) by
user, every record of a user reaches the same input partition, hence the same worker and state.

Writes are outputs of the handler (`Outputs.put_user_state`): the runtime produces them with the
batch's other records and applies them here once the broker has acknowledged them, so when an input
offset is committed its state change is in Kafka. A record handled twice (at-least-once) writes twice;
values must be built so that this changes nothing (sets of notification ids, not counters).

A rebalance caveat, kept because it is rare and self-healing: a worker that loses a partition while
a batch is in flight may write one last value after the new owner has read the changelog; the new
owner handles the same uncommitted records again, so what it writes next supersedes that value.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from streams.kafka_clients import client_kwargs
from streams.settings import Settings
from streams.topics import TopicSpec

log = logging.getLogger(__name__)


class UserStateTable(Service):
    """user key → JSON value, for the users of the input partitions this worker holds."""

    def __init__(self, settings: Settings, spec: TopicSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.spec = spec
        self.values: dict[str, Any] = {}
        self.partitions: dict[str, int] = {}  # user key → the partition it lives in
        self.loaded: set[int] = set()
        self.lock = asyncio.Lock()  # a stage's agents (one per input) share the table

    async def on_start(self) -> None:
        # No group: the worker picks the partitions itself, as its input assignment says.
        self.consumer = AIOKafkaConsumer(**client_kwargs(self.settings),
                                         enable_auto_commit=False, group_id=None)
        await self.consumer.start()

    async def on_stop(self) -> None:
        if hasattr(self, "consumer"):
            await self.consumer.stop()

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def partition_of(self, key: str) -> int | None:
        return self.partitions.get(key)

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self.values.items()))

    def __len__(self) -> int:
        return len(self.values)

    async def load(self, partitions: Iterable[int]) -> None:
        """Read the changelog partitions not held yet to their end, so their users' state is here."""
        async with self.lock:
            missing = sorted(set(partitions) - self.loaded)
            if not missing:
                return
            tps = [TopicPartition(self.spec.name, p) for p in missing]
            self.consumer.assign(tps)
            await self.consumer.seek_to_beginning(*tps)
            ends = await self.consumer.end_offsets(tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                batches = await self.consumer.getmany(*pending, timeout_ms=500)
                for tp, messages in batches.items():
                    for message in messages:
                        self.apply(tp.partition, message.key, message.value)
                for tp in list(pending):
                    if await self.consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
            self.consumer.assign([])
            self.loaded.update(missing)
            log.info("%s: loaded partitions %s (%d users held)", self.spec.name, missing, len(self.values))

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the users of partitions this worker no longer holds; their next owner reads them."""
        gone = set(partitions) & self.loaded
        if not gone:
            return
        self.loaded -= gone
        for key in [key for key, partition in self.partitions.items() if partition in gone]:
            del self.partitions[key]
            self.values.pop(key, None)

    def apply(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """One changelog entry (read back, or just acknowledged after a write)."""
        if key is None:
            return
        user = key.decode(errors="replace")
        if value is None:
            self.values.pop(user, None)
            self.partitions.pop(user, None)
            return
        try:
            self.values[user] = json.loads(value)
        except ValueError:
            log.error("%s: skipping an undecodable value for %r", self.spec.name, user)
            return
        self.partitions[user] = partition

    @staticmethod
    def encode(value: Any) -> bytes | None:
        return None if value is None else json.dumps(value, separators=(",", ":")).encode()
