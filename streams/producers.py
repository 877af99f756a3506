"""A producer for the processes that write to Kafka outside a stage's batch path: the gateway and the
in-app adapter. Stages produce through their Faust app (streams/runtime.py)."""

import asyncio
import contextlib

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from streams.kafka_clients import client_kwargs
from streams.settings import Settings


class RenewingProducer:
    """An idempotent aiokafka producer (acks=all), made on first use and made anew after a failure:
    once a batch of an idempotent producer failed, it cannot send again."""

    def __init__(self, settings: Settings, linger_ms: int = 0) -> None:
        self.settings = settings
        self.linger_ms = linger_ms
        self.producer: AIOKafkaProducer | None = None

    async def get(self) -> AIOKafkaProducer:
        """The producer; raises KafkaError while Kafka is away."""
        if self.producer is None:
            producer = AIOKafkaProducer(
                **client_kwargs(self.settings), acks="all", enable_idempotence=True,
                linger_ms=self.linger_ms, max_request_size=self.settings.max_message_bytes)
            try:
                await producer.start()
            except KafkaError:
                await producer.stop()
                raise
            self.producer = producer
        return self.producer

    async def send(self, topic: str, value: bytes, key: bytes | None, timeout_s: float) -> RecordMetadata:
        """The record's metadata once the broker has it; KafkaError or TimeoutError (after which the
        producer is made anew) when it does not take it within `timeout_s`. Bounded here: aiokafka
        does not expire a batch for a broker it cannot reach."""
        try:
            return await asyncio.wait_for((await self.get()).send_and_wait(topic, value, key=key), timeout_s)
        except (KafkaError, asyncio.TimeoutError):
            await self.drop()
            raise

    async def drop(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # it failed already; what matters is the next one
                await asyncio.wait_for(producer.stop(), timeout=5)
