"""The stage runtime: runs a declared stage (streams/stage.py) as Faust agents over its Kafka topics.

Written once for every stage. Per input topic, one Faust agent that:

1. takes a batch of messages (`noack_take`: nothing is acked by Faust itself),
2. decodes them (one record per message, or a RecordBundle of many); undecodable ones become
   dead letters,
3. calls the stage's handler on the batch; if it raises, calls it on each record alone, so a
   poison record is dead-lettered alone and the rest flows on,
4. produces every output (bundled per partition on internal topics) and waits until the broker
   acknowledged each one (acks=all); if the broker refuses any, the worker exits without acking
   (the supervisor or Kubernetes starts it again, and it re-reads what was not committed),
5. acks the batch's messages, so Faust commits their offsets; then applies the state writes.

Per-key order holds: a partition's messages are handled in order, a bundle holds records of one
output partition in the order they were emitted, and a batch's outputs are acknowledged before the
next batch is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

from schemas.serde import AvroSerde, RegistryUnavailableError, SchemaDecodeError
from streams.codec import default_serde
from streams.app import create_app
from streams.codec import bundle, chunks, unbundle
from streams.health import BATCH_SECONDS, OUTCOMES, RECORDS_IN, RECORDS_OUT, SINCE_REQUEST, HealthServer
from streams.logs import NOTIFICATION_ID
from streams.settings import Settings
from streams.stage import Context, Incoming, Outgoing, Outputs, StageSpec
from streams.tables import CancellationTable, FoldedTable, PreferenceTable, ReceiptTable, StateTable, TemplateTable
from streams.topics import TopicSpec
from streams.user_state import UserStateTable

log = logging.getLogger(__name__)


class ProduceFailed(RuntimeError):
    """The broker did not acknowledge a stage's outputs in time; the worker must not commit."""


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition of a bundled topic a key goes to. Only Herald produces bundled topics, so it
    can use a cheap hash of its own (CRC-32) instead of the Java client's murmur2."""
    return zlib.crc32(key or b"") % partitions


class StageRuntime:
    """One stage's Faust app, its tables and services, and the agent that runs its handler."""

    def __init__(self, spec: StageSpec, settings: Settings, serde: AvroSerde | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.serde = serde or default_serde()
        self.app = create_app(settings, spec.app_id(settings))
        self.context = Context(spec.name, settings, self.serde)
        self.tables: list[FoldedTable] = []
        if "templates" in spec.tables:
            self.context.templates = self.table(TemplateTable(settings, self.serde))
        if "preferences" in spec.tables:
            self.context.preferences = self.table(PreferenceTable(settings, self.serde))
        if "cancellations" in spec.tables:
            self.context.cancellations = self.table(CancellationTable(settings, self.serde))
        if "receipts" in spec.tables:
            self.context.receipts = self.table(ReceiptTable(settings, self.serde))
        for state in spec.state:
            table = StateTable(settings, state.topic, getattr(settings, state.ttl_setting), lambda: self.app.producer)
            self.context.state[state.topic.name] = self.table(table)
        for changelog in spec.user_state:
            self.context.user_state[changelog.name] = UserStateTable(settings, changelog)
        self.context.services = spec.services(settings) if spec.services else {}
        self.health = HealthServer(settings, spec.name, self.ready, self.consumer_lag)
        if spec.handle is not None:
            for source in spec.inputs:
                self.add_agent(source)
            if self.context.state:
                self.app.timer(interval=60.0)(self.purge_state)
            if self.context.user_state:
                self.app.on_partitions_revoked.connect(self.forget_user_state)
        # A tick and a batch must not change the same user's state at once: each reads it, and the
        # one whose write is applied last would undo the other's. A stage with a tick takes them in
        # turn; the others (deliver's many agents) keep running side by side.
        self.tick_lock: asyncio.Lock | contextlib.nullcontext = contextlib.nullcontext()
        if spec.tick is not None:
            self.tick_lock = asyncio.Lock()
            self.app.timer(interval=getattr(settings, spec.tick_setting))(self.run_tick)

    @property
    def services(self) -> list[faust.types.ServiceT]:
        """What the worker starts beside the app: folded tables, provider adapters, a sink."""
        return [*self.tables, *self.context.user_state.values(), *self.context.services.values(), self.health]

    def ready(self) -> bool:
        """Tables caught up and, for a stage with agents, partitions assigned (streams/health.py)."""
        if not all(table.ready.is_set() for table in self.tables):
            return False
        return self.spec.handle is None or bool(self.assignment())

    def assignment(self) -> set[Any]:
        try:
            return set(self.app.consumer.assignment())
        except Exception:  # noqa: BLE001 - not started yet, or stopping: nothing assigned
            return set()

    def consumer_lag(self) -> list[tuple[str, int, int]]:
        """(topic, partition, messages behind) of each assigned partition, from the last commit
        (Faust keeps committed offsets in `_committed_offset`; it has no public reader)."""
        consumer = self.app.consumer
        lag = []
        for tp in sorted(self.assignment()):
            committed = consumer._committed_offset.get(tp)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag.append((tp.topic, tp.partition, max(highwater - (committed or 0), 0)))
        return lag

    def table(self, table: FoldedTable) -> FoldedTable:
        self.tables.append(table)
        return table

    def add_agent(self, source: TopicSpec) -> None:
        channel = self.app.topic(source.name, key_type=bytes, value_type=bytes, key_serializer="raw",
                                 value_serializer="raw")

        async def consume(stream: faust.StreamT) -> None:
            for table in self.tables:
                await table.wait_ready()
            within = (self.settings.stage_delayed_within_s if source in self.spec.delayed_inputs
                      else self.settings.stage_batch_within_s)
            async for events in stream.noack_take(self.settings.stage_batch_max, within=within):
                try:
                    async with self.tick_lock:
                        await self.load_user_state(events)
                        await self.process(source, events)
                except Exception as exc:
                    # Unacked, the batch would stall its partitions' commits for good: the worker
                    # exits instead, and its restart reads the batch again.
                    log.exception("%s: giving up on a batch from %s", self.spec.name, source.name)
                    await self.app.crash(exc)
                    raise
                for event in events:
                    await stream.ack(event)

        consume.__name__ = consume.__qualname__ = f"{self.spec.name}_{source.name.replace('.', '_')}"
        self.app.agent(channel, name=f"{self.spec.name}-{source.name}")(consume)

    async def process(self, source: TopicSpec, events: list[faust.EventT]) -> None:
        """Decode, handle, produce and wait for the broker; the caller acks only after this returns.

        The records go to the handler in chunks, each chunk's outputs in Kafka before the next.
        """
        started = time.perf_counter()
        out, batch = await self.decode_batch(source, events)
        RECORDS_IN.labels(self.spec.name, source.name).inc(len(batch))
        await self.emit(out, "")
        chunk = getattr(self.settings, self.spec.chunk_setting)
        for start in range(0, len(batch), chunk):
            # A block id of its own for each write: a replayed chunk skips what it finds done, so
            # its block must not replace the one that recorded those entries.
            block_id = f"{batch[start].position}~{uuid.uuid4().hex}"
            await self.emit(await self.handle(batch[start:start + chunk]), block_id)
        BATCH_SECONDS.labels(self.spec.name).observe(time.perf_counter() - started)

    async def emit(self, out: Outputs, block_id: str) -> None:
        """Produce a chunk's outputs and state; once acknowledged, fold the state into its tables."""
        blocks = out.state_blocks(block_id)
        user_writes = out.user_state_records()
        await self.produce([*out.records, *blocks, *user_writes])
        self.count(out)
        for block in blocks:
            table = self.context.state[block.topic.name]
            table.fold(block.key or b"", table.decode(block.value or b"null"))
        for write in user_writes:
            assert write.partition is not None
            self.context.user_state[write.topic.name].apply(write.partition, write.key, write.value)

    def count(self, out: Outputs) -> None:
        """The metrics of an acknowledged chunk: records out per topic, outcomes by reason, latency."""
        for topic, count in Counter(record.topic.name for record in out.records).items():
            RECORDS_OUT.labels(self.spec.name, topic).inc(count)
        for (status, reason), count in out.tally.items():
            OUTCOMES.labels(self.spec.name, status, reason).inc(count)
        for status, seconds in out.since_request:
            SINCE_REQUEST.labels(self.spec.name, status).observe(seconds)

    async def load_user_state(self, events: list[faust.EventT]) -> None:
        """Before a batch is handled: the per-user state of its partitions, read if not held yet."""
        if self.context.user_state:
            partitions = {event.message.partition for event in events}
            for table in self.context.user_state.values():
                await table.load(partitions)

    def forget_user_state(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        for table in self.context.user_state.values():
            table.forget(tp.partition for tp in revoked)

    async def run_tick(self) -> None:
        """The stage's time-driven work, emitted like a batch's outputs."""
        assert self.spec.tick is not None
        if not all(table.ready.is_set() for table in self.tables):
            return
        async with self.tick_lock:
            # The state of every input partition held, not only of those a batch came from since:
            # after a restart, a window that gets no new record must still close.
            inputs = {source.name for source in self.spec.inputs}
            partitions = {tp.partition for tp in self.assignment() if tp.topic in inputs}
            for table in self.context.user_state.values():
                await table.load(partitions)
            result = self.spec.tick(self.context)
            out = await result if inspect.isawaitable(result) else result
            try:
                await self.emit(out, f"tick~{uuid.uuid4().hex}")
            except Exception as exc:
                log.exception("%s: giving up on a tick's outputs", self.spec.name)
                await self.app.crash(exc)
                raise

    async def decode_batch(self, source: TopicSpec, events: list[faust.EventT]) -> tuple[Outputs, list[Incoming]]:
        """Decode the batch; while the schema registry is unreachable, wait: the records may be fine."""
        delay = 0.5
        while True:
            out = self.context.outputs()
            try:
                return out, self.decode(source, events, out)
            except RegistryUnavailableError as exc:
                log.warning("%s: schema registry unavailable (%s); retrying in %.1fs", self.spec.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def decode(self, source: TopicSpec, events: Iterable[faust.EventT], out: Outputs) -> list[Incoming]:
        batch: list[Incoming] = []
        for event in events:
            message = event.message
            headers = dict(message.headers or {})
            if source.bundled:
                try:
                    records = unbundle(self.serde, message.value)
                except RegistryUnavailableError:
                    raise
                except SchemaDecodeError as exc:
                    out.dead_letter(None, "undecodable", str(exc), topic=message.topic, key=message.key,
                                    value=message.value, partition=message.partition, offset=message.offset,
                                    headers=headers)
                    continue
            else:
                records = [(message.key, message.value)]
            for index, (key, value) in enumerate(records):
                where = dict(topic=message.topic, partition=message.partition, offset=message.offset,
                             index=index if source.bundled else -1, headers=headers)
                try:
                    schema, record = self.decode_value(source, value)
                except RegistryUnavailableError:
                    raise
                except SchemaDecodeError as exc:
                    out.dead_letter(None, "undecodable", str(exc), key=key, value=value,
                                    topic=message.topic, partition=message.partition, offset=message.offset,
                                    headers=headers)
                    continue
                batch.append(Incoming(key=key, value=record, schema=schema, raw=value, **where))
        return batch

    def decode_value(self, source: TopicSpec, value: bytes | None) -> tuple[str, dict]:
        if value is None:
            raise SchemaDecodeError("empty message (no value)")
        if len(source.schemas) == 1:
            return source.schemas[0], self.serde.decode(value, source.schemas[0])
        return self.serde.decode_any(value, source.schemas)

    async def handle(self, batch: list[Incoming]) -> Outputs:
        """The handler's outputs for the batch; a record that makes it raise is dead-lettered alone."""
        try:
            return await self.call(batch)
        except Exception as exc:
            if len(batch) == 1:
                return self.poison(batch[0], exc)
            log.warning("%s: a batch of %d failed; handling its records one by one", self.spec.name, len(batch))
        out = self.context.outputs()
        try:
            for record in batch:
                self.context.carried = out
                try:
                    out.extend(await self.call([record]))
                except Exception as exc:
                    out.extend(self.poison(record, exc))
        finally:
            self.context.carried = None
        return out

    async def call(self, batch: list[Incoming]) -> Outputs:
        assert self.spec.handle is not None
        result = self.spec.handle(batch, self.context)
        return await result if inspect.isawaitable(result) else result

    def poison(self, record: Incoming, exc: Exception) -> Outputs:
        notification_id = record.value.get("notification_id") if isinstance(record.value, dict) else None
        NOTIFICATION_ID.set(str(notification_id) if notification_id else None)
        log.exception("%s: failed on %s", self.spec.name, record.position)
        out = self.context.outputs()
        NOTIFICATION_ID.set(None)
        out.dead_letter(record, "processing_error", f"{type(exc).__name__}: {exc}", notification_id=notification_id)
        return out

    def messages(self, records: Iterable[Outgoing]) -> list[tuple[str, bytes | None, bytes | None, int | None]]:
        """Kafka messages for the outputs: RecordBundles on internal topics (per partition of their
        keys where key order matters, else as few as fit), one record per message elsewhere."""
        messages: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        grouped: dict[tuple[TopicSpec, int], list[tuple[bytes | None, bytes]]] = defaultdict(list)
        for record in records:
            if record.topic.bundled and record.value is not None:
                partition = partition_for(record.key, self.settings.topic_partitions) if record.topic.key_ordered else -1
                grouped[(record.topic, partition)].append((record.key, record.value))
            else:
                messages.append((record.topic.name, record.key, record.value, record.partition))
        for (topic, partition), keyed in grouped.items():
            for chunk in chunks(keyed, self.settings.bundle_max_records, self.settings.max_record_bytes):
                # Any partition will do where key order does not matter: the first key's spreads them.
                to = partition if partition >= 0 else partition_for(chunk[0][0], self.settings.topic_partitions)
                messages.append((topic.name, chunk[0][0], bundle(self.serde, chunk), to))
        return messages

    async def produce(self, records: list[Outgoing]) -> None:
        """Send every output and wait for the broker's acknowledgement of each.

        A failure is not retried here: the producer is idempotent, and after a refused batch its
        sequence numbers have a gap that fails every later send, so only a new producer can go on.
        The caller crashes the worker; its restart re-reads the uncommitted input.
        """
        failed = await self.send_all(self.messages(records))
        if failed:
            raise ProduceFailed(f"{self.spec.name}: {len(failed)} message(s) not acknowledged by the broker "
                                f"({', '.join(sorted({topic for topic, *_ in failed}))}); exiting without committing")

    async def send_all(self, messages: list[tuple[str, bytes | None, bytes | None, int | None]]) -> list:
        """Send, then wait for every acknowledgement; returns the messages that failed."""
        producer = self.app.producer
        futures: list[Awaitable | BaseException] = []
        for topic, key, value, partition in messages:
            try:
                futures.append(await producer.send(topic, key, value, partition, None, None))
            except (KafkaError, ProducerSendError) as exc:
                futures.append(exc)
        # Send now rather than after the linger time: the batch waits for these acknowledgements.
        # (flush() does not raise for a failed batch; each future says how its record fared.)
        await producer.flush()
        failed = []
        for message, future in zip(messages, futures):
            if isinstance(future, BaseException):
                error: BaseException | None = future
            else:
                try:
                    await future
                    error = None
                except (KafkaError, ProducerSendError) as exc:
                    error = exc
            if error is not None:
                log.warning("%s: produce to %s failed: %r", self.spec.name, message[0], error)
                failed.append(message)
        return failed

    async def purge_state(self) -> None:
        for table in self.context.state.values():
            purged = await table.purge()
            if purged:
                log.info("%s: purged %d entries older than %ss from %s", self.spec.name, purged, table.ttl_s,
                         table.spec.name)
