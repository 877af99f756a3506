"""The Faust app every stage runs in, and the Faust handles of the topic catalog."""

import faust

from streams.codec import codec_name
from streams.settings import Settings, get_settings
from streams.topics import TopicSpec


def create_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # at_least_once on purpose: faust-streaming's exactly_once is broken (#323, #440, #517);
        # every effect downstream is idempotent instead.
        processing_guarantee="at_least_once",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=False,  # `herald topics create` owns topic configuration
        store="memory://",  # tables recover from their changelog topics on start
        datadir=str(settings.data_dir / "faust"),
        web_enabled=False,
        producer_acks=-1,
        producer_linger_ms=5,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
    )


app = create_app(get_settings())


def topic(spec: TopicSpec) -> faust.TopicT:
    """The Faust topic for a catalog entry; values are Avro records (dicts) via the Avro codec."""
    return app.topic(spec.name, key_type=bytes, value_serializer=codec_name(spec.schemas), partitions=None)
