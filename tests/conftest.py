"""Test layout: tests/unit needs no servers (and may not reach them); tests/integration needs the
real Kafka and ClickHouse of deploy/local, started by `make test`."""
