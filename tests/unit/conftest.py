"""Unit tests stay fast and honest: any attempt to reach Kafka or ClickHouse fails the test."""

import socket
from collections.abc import Iterator

import pytest

from streams.settings import get_settings


@pytest.fixture(autouse=True)
def no_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    settings = get_settings()
    blocked = {
        int(settings.kafka_bootstrap.rsplit(":", 1)[1]),
        settings.clickhouse_port,
        settings.clickhouse_http_port,
    }
    real_connect = socket.socket.connect

    def guarded_connect(sock: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and len(address) >= 2 and address[1] in blocked:
            raise AssertionError(f"unit test tried to reach a server at {address}; move it to tests/integration")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield
