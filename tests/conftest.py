"""Test layout: tests/unit needs no servers (and may not reach them); tests/integration needs the
real Kafka and ClickHouse of deploy/local, started by `make test`; tests/chaos injects faults into a
private stack of its own (tests/stack.py), short in `make test`, long in `make chaos`."""
