"""A ClickHouse native-protocol client from settings."""

from clickhouse_driver import Client

from streams.settings import Settings


def connect(settings: Settings, database: str | None = "") -> Client:
    """A client for the configured server; database "" means the Herald database, None means none."""
    return Client(
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        user=settings.clickhouse_user,
        password=settings.clickhouse_password,
        database=(settings.clickhouse_database if database == "" else database) or "default",
        connect_timeout=5,
        send_receive_timeout=60,
    )
