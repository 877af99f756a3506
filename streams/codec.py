"""Message framing on Herald's topics: one Avro record per message, or a RecordBundle of them.

Public topics carry one framed Avro record per Kafka message. Internal topics between stages
(`TopicSpec.bundled`) carry a RecordBundle: many records, each with its own key and its own framed
value, so one Kafka message (and one pass through Faust's per-message machinery) moves hundreds of
records, and one undecodable record can be dead-lettered alone.
"""

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from schemas.serde import AvroSerde, SchemaRegistry
from streams.settings import get_settings

# Bytes a RecordBundle adds per record beyond its key and value (lengths, union index), and per bundle.
BUNDLE_RECORD_OVERHEAD = 16
BUNDLE_OVERHEAD = 32


@lru_cache(maxsize=1)
def default_serde() -> AvroSerde:
    """The process-wide serde: with a schema registry when HERALD_SCHEMA_REGISTRY_URL is set."""
    url = get_settings().schema_registry_url
    return AvroSerde(SchemaRegistry(url) if url else None)


class Envelope(NamedTuple):
    """A record from a topic that carries more than one schema, with the schema's short name."""

    schema: str
    record: dict[str, Any]


def bundle(serde: AvroSerde, records: Sequence[tuple[bytes | None, bytes]]) -> bytes:
    """One RecordBundle message holding `records` (key, framed value) in order."""
    return serde.encode("RecordBundle", {"records": [{"key": key, "value": value} for key, value in records]})


def unbundle(serde: AvroSerde, data: bytes) -> list[tuple[bytes | None, bytes]]:
    """The (key, framed value) records of a RecordBundle message; raises SchemaDecodeError."""
    return [(record["key"], record["value"]) for record in serde.decode(data, "RecordBundle")["records"]]


def chunks(records: Sequence[tuple[bytes | None, bytes]], max_records: int,
           max_bytes: int) -> list[list[tuple[bytes | None, bytes]]]:
    """Split records into bundles of at most `max_records` records and `max_bytes` bytes, in order."""
    out: list[list[tuple[bytes | None, bytes]]] = []
    current: list[tuple[bytes | None, bytes]] = []
    size = BUNDLE_OVERHEAD
    for key, value in records:
        record_size = len(value) + len(key or b"") + BUNDLE_RECORD_OVERHEAD
        if current and (len(current) >= max_records or size + record_size > max_bytes):
            out.append(current)
            current, size = [], BUNDLE_OVERHEAD
        current.append((key, value))
        size += record_size
    if current:
        out.append(current)
    return out
