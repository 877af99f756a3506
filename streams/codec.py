"""The Avro codec registered with Faust, so agents send and receive schema records, not bytes.

Decoding never raises into Faust: Faust would log a decode error and skip the message, which is a
silent loss. Instead bytes that do not decode come out as `Undecodable`, and the agent sends them to
herald.dlq with the reason (see agents/dead_letters.py).
"""

from typing import Any, NamedTuple

from faust.serializers import codecs

from schemas.serde import AvroSerde, SchemaDecodeError, default_serde


class Undecodable(NamedTuple):
    data: bytes
    error: str


class Envelope(NamedTuple):
    """A record from a topic that carries more than one schema, with the schema's short name."""

    schema: str
    record: dict[str, Any]


class AvroCodec(codecs.Codec):
    def __init__(self, schemas: tuple[str, ...], serde: AvroSerde) -> None:
        super().__init__(schemas=schemas)
        self.schemas = schemas
        self.serde = serde

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, Envelope):
            return self.serde.encode(obj.schema, obj.record)
        return self.serde.encode(self.schemas[0], obj)

    def _loads(self, s: bytes) -> Any:
        try:
            if len(self.schemas) == 1:
                return self.serde.decode(s, self.schemas[0])
            return Envelope(*self.serde.decode_any(s, self.schemas))
        except SchemaDecodeError as exc:
            return Undecodable(s, str(exc))


def codec_name(schemas: tuple[str, ...]) -> str:
    """Register (once) and return the Faust codec name for values of these schemas."""
    name = "avro-" + "-".join(schemas)
    if name not in codecs.codecs:
        codecs.register(name, AvroCodec(schemas, default_serde()))
    return name
