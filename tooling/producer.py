"""Publishing records to a catalog topic from a command-line tool (kafka-python, synchronous)."""

from collections.abc import Iterable

from kafka import KafkaProducer

from schemas.models import AvroModel
from streams.codec import default_serde
from streams.kafka_clients import client_kwargs
from streams.settings import get_settings
from streams.topics import TopicSpec


def publish(spec: TopicSpec, records: Iterable[tuple[bytes, AvroModel]]) -> None:
    """Send keyed records and wait until the broker has them all."""
    settings = get_settings()
    producer = KafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=True,
                             max_request_size=settings.max_message_bytes)
    try:
        serde = default_serde()
        for key, record in records:
            producer.send(spec.name, key=key, value=serde.encode_model(record))
        producer.flush()
    finally:
        producer.close()
