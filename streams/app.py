"""The Faust apps the stages run in, and the Faust handles of the topic catalog.

Each stage is its own Faust app (consumer group `herald-<stage>`), so each runs and scales on its own:
one process per stage locally (`herald worker --stage all` starts them all), one Deployment per stage
on Kubernetes.
"""

import faust

from streams.codec import codec_name
from streams.settings import Settings, get_settings
from streams.topics import TopicSpec


def create_app(settings: Settings, app_id: str | None = None) -> faust.App:
    app_id = app_id or settings.app_id
    datadir = settings.data_dir / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # at_least_once on purpose: faust-streaming's exactly_once is broken (#323, #440, #517);
        # every effect downstream is idempotent instead.
        processing_guarantee="at_least_once",
        # Tables (idempotency keys, delivered) keep JSON; catalog topics carry raw keys and Avro values.
        key_serializer="json",
        value_serializer="json",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        store="memory://",  # tables recover from their changelog topics on start
        datadir=str(datadir),
        web_enabled=False,
        producer_acks=-1,
        producer_linger_ms=settings.producer_linger_ms,
        producer_max_batch_size=256 * 1024,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4096,
    )


def stage_app(stage: str) -> faust.App:
    settings = get_settings()
    return create_app(settings, f"{settings.app_id}-{stage}")


def topic(app: faust.App, spec: TopicSpec) -> faust.TopicT:
    """The Faust topic for a catalog entry; values are Avro records (dicts) via the Avro codec."""
    return app.topic(spec.name, key_type=bytes, key_serializer="raw", value_serializer=codec_name(spec.schemas))
