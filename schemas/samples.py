"""Sample records generated from an Avro schema: for tests, benchmarks and compatibility checks.

`sample_record(schema)` fills every field by its type (the first non-null branch of a union, a
non-default enum symbol, two array items, one map entry), so a round trip exercises every part of
the schema. `sample_record(schema, minimal=True)` sets only the fields without a default, leaving
the rest to the writer. Values are in the form fastavro's reader returns (uuid.UUID, UTC datetimes
with whole milliseconds), so `decode(encode(sample)) == sample`.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

__all__ = ["covers", "sample_record", "sample_value", "resolve_named_types"]

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _full(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def resolve_named_types(schema: Any, namespace: str | None = None, named: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type (record, enum, fixed) defined in the schema, by full name."""
    named = {} if named is None else named
    if isinstance(schema, list):
        for branch in schema:
            resolve_named_types(branch, namespace, named)
    elif isinstance(schema, dict):
        t = schema.get("type")
        if t in ("record", "error", "enum", "fixed"):
            full = _full(schema["name"], schema.get("namespace", namespace))
            named[full] = schema
            namespace = full.rpartition(".")[0] or None
            for field in schema.get("fields", ()):
                resolve_named_types(field["type"], namespace, named)
        elif t == "array":
            resolve_named_types(schema["items"], namespace, named)
        elif t == "map":
            resolve_named_types(schema["values"], namespace, named)
        elif isinstance(t, (dict, list)):
            resolve_named_types(t, namespace, named)
    return named


class _Sampler:
    def __init__(self, root: dict[str, Any], minimal: bool, rng: random.Random) -> None:
        self.named = resolve_named_types(root)
        self.minimal = minimal
        self.rng = rng

    def value(self, schema: Any, namespace: str | None, hint: str) -> Any:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self.primitive(schema, hint)
            return self.value(self.named[_full(schema, namespace)], namespace, hint)
        if isinstance(schema, list):
            branches = [b for b in schema if b != "null"]
            if not branches:
                return None
            return self.value(branches[0], namespace, hint)
        t = schema["type"]
        logical = schema.get("logicalType")
        if logical:
            return self.logical(schema, logical, namespace, hint)
        if t in ("record", "error"):
            return self.record(schema, namespace)
        if t == "enum":
            symbols = schema["symbols"]
            # Not the default (so a round trip proves the symbol travelled), else the last one.
            default = schema.get("default")
            choices = [s for s in symbols if s != default] or symbols
            return choices[self.rng.randrange(len(choices))]
        if t == "fixed":
            return bytes(self.rng.randrange(256) for _ in range(schema["size"]))
        if t == "array":
            return [self.value(schema["items"], namespace, f"{hint}_{i}") for i in range(2)]
        if t == "map":
            return {f"{hint}_key": self.value(schema["values"], namespace, f"{hint}_value")}
        if isinstance(t, (str, list, dict)):
            return self.value(t, namespace, hint)
        raise ValueError(f"unsupported schema {schema!r}")

    def record(self, schema: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        full = _full(schema["name"], schema.get("namespace", namespace))
        namespace = full.rpartition(".")[0] or None
        out = {}
        for field in schema["fields"]:
            if self.minimal and "default" in field:
                continue
            out[field["name"]] = self.value(field["type"], namespace, field["name"])
        return out

    def primitive(self, t: str, hint: str) -> Any:
        r = self.rng
        if t == "null":
            return None
        if t == "boolean":
            return True
        if t == "int":
            return r.randrange(1, 2**31 - 1)
        if t == "long":
            return r.randrange(2**31, 2**62)
        if t in ("float", "double"):
            return r.randrange(1, 1000) / 8  # exact in binary
        if t == "bytes":
            return bytes([0, 255]) + hint.encode() + bytes(r.randrange(256) for _ in range(4))
        if t == "string":
            return f"{hint}-{r.randrange(10**6)}-é✓"
        raise ValueError(t)

    def logical(self, schema: dict[str, Any], logical: str, namespace: str | None, hint: str) -> Any:
        r = self.rng
        moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC) + timedelta(milliseconds=r.randrange(10**10))
        if logical == "uuid":
            return uuid.UUID(int=r.getrandbits(128), version=4)
        if logical == "timestamp-millis":
            return moment
        if logical == "timestamp-micros":
            return moment + timedelta(microseconds=r.randrange(1000))
        if logical == "date":
            return moment.date()
        if logical == "time-millis":
            return time(7, 8, 9, 123000)
        if logical == "time-micros":
            return time(7, 8, 9, 123456)
        if logical == "decimal":
            scale = schema.get("scale", 0)
            return Decimal(r.randrange(10**6)).scaleb(-scale)
        # Unknown logical types read as their underlying type.
        underlying = {k: v for k, v in schema.items() if k != "logicalType"}
        return self.value(underlying if len(underlying) > 1 else underlying["type"], namespace, hint)


def sample_record(schema: dict[str, Any], *, minimal: bool = False, seed: int = 0) -> dict[str, Any]:
    """A record of the (record) schema with every field filled, or only the required ones."""
    return _Sampler(schema, minimal, random.Random(seed)).record(schema, schema.get("namespace"))


def sample_value(schema: Any, root: dict[str, Any], *, seed: int = 0) -> Any:
    """A value of a type inside root (to resolve the named types it refers to)."""
    return _Sampler(root, False, random.Random(seed)).value(schema, root.get("namespace"), "value")



def covers(decoded: Any, given: Any) -> bool:
    """Whether a decoded value holds every value of the one given to the writer (records may have
    more fields: the defaults the writer or the reader filled in)."""
    if isinstance(given, dict):
        return isinstance(decoded, dict) and all(k in decoded and covers(decoded[k], v) for k, v in given.items())
    if isinstance(given, list):
        return isinstance(decoded, list) and len(decoded) == len(given) and all(map(covers, decoded, given))
    return decoded == given
