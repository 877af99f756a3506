"""A private Herald stack for tests that must not share servers: its own Kafka and ClickHouse on free
loopback ports, its own HERALD_DATA_DIR (pid files, logs, data, mail), Kafka's jars from the usual cache.

deploy/local/*.sh and every Herald process read the HERALD_* environment, so `private_stack` sets it
for as long as the stack is in use (the scripts and the processes `herald up` starts inherit it), and
clears `get_settings()`'s cache so that code in the test process that reads the settings (such as
tooling/producer.py's `publish`) talks to this stack too. On the way out it stops what that data
directory's pid files name, and puts the environment and the settings cache back: the servers of
deploy/local on 127.0.0.1:9092/9000, and anyone using them, are never touched.
"""

import os
import shutil
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from streams.settings import Settings, get_settings
from tooling.local import down


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def require_stack_tools() -> None:
    """Fail (HERALD_REQUIRE_SERVERS=1, as in `make test`) or skip when a server cannot be started."""
    missing = [tool for tool in ("java", "clickhouse-server") if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed; `make setup` installs them"
        if os.environ.get("HERALD_REQUIRE_SERVERS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def stack_environment(data_dir: Path) -> dict[str, str]:
    """HERALD_* variables of a stack under `data_dir` on free ports, sharing the usual jar cache."""
    kafka, controller, kafka_tls, kafka_sasl, clickhouse, clickhouse_http, smtp, gateway, peers, apns = free_ports(10)
    return {
        "HERALD_DATA_DIR": str(data_dir),
        "HERALD_CACHE_DIR": os.environ.get("HERALD_CACHE_DIR") or str(get_settings().data_dir / "cache"),
        "HERALD_KAFKA_PORT": str(kafka),
        "HERALD_KAFKA_CONTROLLER_PORT": str(controller),
        "HERALD_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        # The broker's TLS listeners (deploy/local/kafka.sh); clients use the plaintext one unless told.
        "HERALD_KAFKA_TLS_PORT": str(kafka_tls),
        "HERALD_KAFKA_SASL_PORT": str(kafka_sasl),
        "HERALD_CLICKHOUSE_PORT": str(clickhouse),
        "HERALD_CLICKHOUSE_HTTP_PORT": str(clickhouse_http),
        "HERALD_SMTP_PORT": str(smtp),
        "HERALD_GATEWAY_PORT": str(gateway),
        "HERALD_PUBLIC_URL": f"http://127.0.0.1:{gateway}",
        "HERALD_PEERS_PORT": str(peers),
        "HERALD_PUSH__APNS__PORT": str(apns),
        # The HTTP providers' base URLs follow the private peers.
        "HERALD_SMS__TWILIO__BASE_URL": f"http://127.0.0.1:{peers}",
        "HERALD_PUSH__FCM__BASE_URL": f"http://127.0.0.1:{peers}",
        "HERALD_PUSH__FCM__TOKEN_URI": f"http://127.0.0.1:{peers}/token",
    }


@contextmanager
def environment(variables: Mapping[str, str | None]) -> Iterator[None]:
    """os.environ with `variables` set (None: unset) inside the block, as it was after it; the
    settings cache follows."""
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in variables.items():
                if value is None:
                    patch.delenv(name, raising=False)
                else:
                    patch.setenv(name, value)
            get_settings.cache_clear()
            yield
    finally:
        get_settings.cache_clear()


@contextmanager
def private_stack(data_dir: Path, extra: Mapping[str, str] | None = None) -> Iterator[Settings]:
    """Settings and environment of a stack under `data_dir` that has never run (nothing is started
    here: `tooling.local.up` or the scripts do that); everything it started is stopped at the end."""
    variables = {**stack_environment(data_dir), **(extra or {})}
    with environment(variables):
        settings = Settings()
        assert settings.data_dir == data_dir and settings.kafka_bootstrap == variables["HERALD_KAFKA_BOOTSTRAP"]
        try:
            yield settings
        finally:
            # `down` stops what the pid files under HERALD_DATA_DIR name: make sure that is still ours.
            assert os.environ["HERALD_DATA_DIR"] == str(data_dir)
            down(settings, lambda line: None)
