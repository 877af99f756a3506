"""Fixtures on the real Kafka broker and ClickHouse server of deploy/local.

When a server does not answer, the tests skip loudly; with HERALD_REQUIRE_SERVERS=1 (set by
`make test`, so always in CI) they fail instead.
"""

import os
import socket
from collections.abc import Iterator

import pytest
from clickhouse_driver import Client
from kafka import KafkaProducer

from schemas.serde import AvroSerde
from streams.codec import default_serde
from sinks.clickhouse_client import connect
from streams.settings import Settings, get_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def require(host: str, port: int, what: str) -> None:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        message = f"{what} at {host}:{port} does not answer ({exc}); start it with `make run`"
        if os.environ.get("HERALD_REQUIRE_SERVERS") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> str:
    host, port = settings.kafka_bootstrap.rsplit(":", 1)
    require(host, int(port), "Kafka")
    return settings.kafka_bootstrap


@pytest.fixture(scope="session")
def clickhouse(settings: Settings) -> Iterator[Client]:
    require(settings.clickhouse_host, settings.clickhouse_port, "ClickHouse")
    client = connect(settings)
    yield client
    client.disconnect()


@pytest.fixture(scope="session")
def serde() -> AvroSerde:
    return default_serde()


@pytest.fixture(scope="session")
def producer(kafka: str) -> Iterator[KafkaProducer]:
    """A plain kafka-python producer, as a user's service would have."""
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=10, batch_size=256 * 1024)
    yield producer
    producer.close()


@pytest.fixture(scope="session")
def pipeline(settings: Settings, kafka: str, clickhouse: Client) -> Iterator[Settings]:
    """The mailbox, the stage workers and the gateway, as `herald up` runs them. Reused when they run
    already (a developer's `herald up`); stopped at the end when this session started them."""
    from sinks.migrate import migrate_up
    from tooling.local import start_herald, stop_process
    from streams.topics import create_topics

    create_topics(settings)
    migrate_up(settings)
    started = start_herald(settings, lambda line: None)
    yield settings
    for name in reversed(started):
        stop_process(settings, name)
