"""The Faust app each stage runs in.

Each stage is its own Faust app (consumer group `herald-<stage>`), so each runs and scales on its own:
one process per stage locally (`herald worker --stage all` starts them all), one Deployment per stage
on Kubernetes.
"""

from collections.abc import Mapping
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Producer

from streams.kafka_clients import faust_credentials
from streams.settings import Settings


class IdempotentProducer(Producer):
    """Faust's producer with Kafka's idempotence on: a broker-side retry cannot write a record
    twice. Faust turns it on only inside transactions, which Herald does not use."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


def create_app(settings: Settings, app_id: str | None = None) -> faust.App:
    app_id = app_id or settings.app_id
    datadir = settings.data_dir / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        # at_least_once on purpose: faust-streaming's exactly_once is broken (#323, #440, #517);
        # every effect downstream is idempotent instead.
        processing_guarantee="at_least_once",
        # Agents read raw bytes: the runtime decodes (single records and RecordBundles) itself.
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        producer_acks=-1,
        producer_linger_ms=settings.producer_linger_ms,
        producer_max_batch_size=256 * 1024,
        producer_max_request_size=settings.max_message_bytes,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4096,
        consumer_group_instance_id=settings.worker_instance_id,
    )
    app.transport.Producer = IdempotentProducer
    return app
