"""Avro serde for Herald's records: schema loading, both wire framings, schema resolution.

Every value on a Herald topic is one Avro record, framed one of two ways (see schemas/README.md):

* Avro single-object encoding (the default): ``C3 01``, the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body.
* Confluent wire format (when a schema registry is configured): ``00``, the 4-byte big-endian schema
  id the registry gave the writer schema, then the Avro binary body.

The decoder accepts both framings whatever the encoder writes. It finds the writer schema from the
frame (a current schema, a kept old version from ``schemas/history/``, a schema added with
`AvroSerde.add_writer_schema`, or the registry) and resolves it to the current schema of the same
name, so data written with any kept version stays readable.

Every schema is parsed once, when this module is imported (or when a writer schema is added or
fetched); the per-message path is a dict lookup plus one fastavro call.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CONFLUENT_MAGIC",
    "HISTORY_DIR",
    "NAMESPACE",
    "SCHEMA_DIR",
    "SINGLE_OBJECT_MAGIC",
    "AvroSerde",
    "RegistryUnavailableError",
    "SchemaDecodeError",
    "SchemaEncodeError",
    "SchemaRegistry",
    "SchemaRegistryError",
    "WriterSchema",
    "current_schemas",
    "fingerprint",
    "history_schemas",
    "load_schema_file",
]

SCHEMA_DIR = Path(__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"
NAMESPACE = "io.herald"

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SINGLE_OBJECT_HEADER_LEN = 10  # 2 magic bytes + 8 fingerprint bytes
_CONFLUENT_HEADER_LEN = 5  # 1 magic byte + 4 schema id bytes

# What fastavro raises on bytes that are not a valid body for the writer schema.
_BODY_ERRORS = (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error)
# What fastavro raises on a record that does not fit the schema.
_RECORD_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError)


class SchemaDecodeError(ValueError):
    """Bytes that cannot be decoded into the expected record (the message says why)."""


class RegistryUnavailableError(SchemaDecodeError):
    """The schema registry could not be asked for a writer schema: the message may be fine.

    A subclass of SchemaDecodeError so code that dead-letters undecodable messages loses nothing;
    code that can retry later should catch it first.
    """


class SchemaEncodeError(ValueError):
    """A record that does not match its schema (the message names the field when it can)."""


class SchemaRegistryError(RuntimeError):
    """The schema registry refused a request or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None, error_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code


# --------------------------------------------------------------------------------------------------
# Schema files


def load_schema_file(path: str | Path) -> dict[str, Any]:
    """Read one self-contained .avsc file as a JSON dict (not parsed by fastavro)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=1)
def _current_files() -> dict[str, dict[str, Any]]:
    return {p.stem: load_schema_file(p) for p in sorted(SCHEMA_DIR.glob("*.avsc"))}


@lru_cache(maxsize=1)
def _history_files() -> dict[str, dict[int, dict[str, Any]]]:
    history: dict[str, dict[int, dict[str, Any]]] = {}
    for p in sorted(HISTORY_DIR.glob("*.avsc")):
        name, dot_v, version = p.stem.rpartition(".v")
        if not dot_v or not version.isdigit():
            raise ValueError(f"{p}: history files are named <Name>.v<N>.avsc")
        history.setdefault(name, {})[int(version)] = load_schema_file(p)
    return {name: dict(sorted(versions.items())) for name, versions in sorted(history.items())}


def current_schemas() -> dict[str, dict[str, Any]]:
    """The current schema of every record, by short name ("LifecycleEvent"), as JSON dicts.

    Returns fresh copies: callers may modify them.
    """
    return json.loads(json.dumps(_current_files()))


def history_schemas() -> dict[str, dict[int, dict[str, Any]]]:
    """Every kept version of every record: {short name: {version: schema dict}}, oldest first."""
    return {
        name: {v: json.loads(json.dumps(s)) for v, s in versions.items()}
        for name, versions in _history_files().items()
    }


def fingerprint(schema: Mapping[str, Any] | str | list[Any]) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, as the 8 bytes
    single-object encoding puts on the wire (little-endian, as the Avro spec and Java do)."""
    return bytes.fromhex(_fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


# --------------------------------------------------------------------------------------------------
# Parsed schemas


def _full_name(schema: Mapping[str, Any]) -> str:
    name = schema["name"]
    if "." in name:
        return name
    namespace = schema.get("namespace")
    return f"{namespace}.{name}" if namespace else name


def _alias_full_names(schema: Mapping[str, Any]) -> frozenset[str]:
    namespace = schema.get("namespace")
    return frozenset(
        a if "." in a or not namespace else f"{namespace}.{a}" for a in schema.get("aliases", ())
    )


def _uuid_string_fields(schema: Mapping[str, Any]) -> tuple[str, ...]:
    """Top-level fields holding a uuid string, alone or in a union: encode checks them, since
    fastavro writes any string there and every reader would then fail on the message."""

    def is_uuid(t: Any) -> bool:
        return isinstance(t, dict) and t.get("type") == "string" and t.get("logicalType") == "uuid"

    names = []
    for field in schema.get("fields", ()):
        t = field["type"]
        if is_uuid(t) or (isinstance(t, list) and any(is_uuid(b) for b in t)):
            names.append(field["name"])
    return tuple(names)


@dataclass(frozen=True, eq=False, slots=True)
class WriterSchema:
    """One schema, parsed once, with everything the per-message path needs."""

    full_name: str  # io.herald.LifecycleEvent
    name: str  # LifecycleEvent
    aliases: frozenset[str]  # full names this record answers to besides full_name
    raw: dict[str, Any]  # the JSON as written in the .avsc file
    parsed: dict[str, Any]  # fastavro's parsed form
    canonical_form: str
    fingerprint: bytes  # 8 bytes, as on the wire
    header: bytes  # single-object header: C3 01 + fingerprint
    uuid_fields: tuple[str, ...]

    @classmethod
    def from_json(cls, schema: Mapping[str, Any] | str) -> WriterSchema:
        raw = json.loads(schema) if isinstance(schema, str) else json.loads(json.dumps(schema))
        if not isinstance(raw, dict) or raw.get("type") != "record":
            raise ValueError("Herald schemas are Avro records: expected a JSON object of type record")
        # A fresh named-types dict per schema: every file defines its named types inline.
        parsed = parse_schema(raw, named_schemas={})
        canonical = to_parsing_canonical_form(raw)
        fp = bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))
        full_name = _full_name(raw)
        return cls(
            full_name=full_name,
            name=full_name.rpartition(".")[2],
            aliases=_alias_full_names(raw),
            raw=raw,
            parsed=parsed,
            canonical_form=canonical,
            fingerprint=fp,
            header=SINGLE_OBJECT_MAGIC + fp,
            uuid_fields=_uuid_string_fields(raw),
        )

    def answers_to(self, full_name: str) -> bool:
        """Whether data written with a record named full_name resolves to this (reader) record."""
        return full_name == self.full_name or full_name in self.aliases


@lru_cache(maxsize=1)
def _parsed_current() -> dict[str, WriterSchema]:
    parsed = {}
    for stem, raw in _current_files().items():
        ws = WriterSchema.from_json(raw)
        if ws.name != stem:
            raise ValueError(f"schemas/{stem}.avsc defines record {ws.full_name}: file and record names must match")
        parsed[stem] = ws
    return parsed


@lru_cache(maxsize=1)
def _parsed_history() -> tuple[WriterSchema, ...]:
    return tuple(WriterSchema.from_json(raw) for versions in _history_files().values() for raw in versions.values())


# --------------------------------------------------------------------------------------------------
# Schema registry


class SchemaRegistry:
    """A Confluent Schema Registry REST client (also Karapace, Redpanda, Apicurio's ccompat API).

    Only what the serde needs: register a schema under a subject, fetch a schema by id. Both are
    cached in-process, so each schema costs one HTTP request per process.
    """

    CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        import httpx  # late: httpx and what it imports cost every process ~10 MB, and most have no registry

        self.url = url.rstrip("/")
        self._client = client or httpx.Client(
            base_url=self.url,
            timeout=timeout,
            auth=auth,
            headers={"Accept": self.CONTENT_TYPE},
            transport=httpx.HTTPTransport(retries=2),  # retries failed connects only
        )
        self._ids: dict[tuple[str, str], int] = {}  # (subject, canonical JSON) -> id
        self._schemas: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(f"schema registry {self.url}: {method} {path} failed: {exc!r}") from exc
        if response.status_code >= 400:
            error_code = None
            message = response.text
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                error_code = body.get("error_code")
                message = body.get("message", message)
            raise SchemaRegistryError(
                f"schema registry {self.url}: {method} {path} -> HTTP {response.status_code}"
                + (f" (error {error_code})" if error_code else "")
                + f": {message}",
                status_code=response.status_code,
                error_code=error_code,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise SchemaRegistryError(f"schema registry {self.url}: {method} {path}: response is not JSON") from exc

    def register(self, subject: str, schema_json: str | Mapping[str, Any]) -> int:
        """Register the schema under the subject (idempotent on the registry) and return its id."""
        text = schema_json if isinstance(schema_json, str) else json.dumps(schema_json, separators=(",", ":"))
        key = (subject, json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")))
        with self._lock:
            cached = self._ids.get(key)
        if cached is not None:
            return cached
        body = self._request(
            "POST",
            f"/subjects/{quote(subject, safe='')}/versions",
            content=json.dumps({"schema": text}).encode(),
            headers={"Content-Type": self.CONTENT_TYPE},
        )
        schema_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(schema_id, int):
            raise SchemaRegistryError(f"schema registry {self.url}: registering {subject}: no id in {body!r}")
        with self._lock:
            self._ids[key] = schema_id
            self._schemas.setdefault(schema_id, json.loads(text))
        return schema_id

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The schema with this id, as a JSON dict."""
        with self._lock:
            cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        body = self._request("GET", f"/schemas/ids/{int(schema_id)}")
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise SchemaRegistryError(f"schema registry {self.url}: schema id {schema_id}: no schema in {body!r}")
        if body.get("schemaType", "AVRO") != "AVRO":
            raise SchemaRegistryError(f"schema registry {self.url}: schema id {schema_id} is {body['schemaType']}, not AVRO")
        schema = json.loads(body["schema"])
        with self._lock:
            self._schemas[schema_id] = schema
        return schema

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------------------------------
# Serde


class AvroSerde:
    """Encodes records to framed Avro bytes and decodes them back, resolving old writer schemas.

    ``encode`` writes single-object encoding, or the Confluent wire format when a registry is given
    (subject = the record's full name, i.e. RecordNameStrategy). ``decode`` and ``decode_any`` read
    both framings. Safe to share between threads and coroutines.
    """

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry
        self._current: dict[str, WriterSchema] = {}
        for short, ws in _parsed_current().items():
            self._current[short] = ws
            self._current[ws.full_name] = ws
        # Writer schemas by fingerprint: history first, so the current schema wins on equal
        # fingerprints (and decode takes the no-resolution fast path for it).
        self._by_fingerprint: dict[bytes, WriterSchema] = {}
        for ws in _parsed_history():
            self._by_fingerprint[ws.fingerprint] = ws
        for ws in _parsed_current().values():
            self._by_fingerprint[ws.fingerprint] = ws
        self._by_id: dict[int, WriterSchema] = {}
        self._confluent_headers: dict[str, bytes] = {}  # full name -> 00 + id
        self._lock = threading.Lock()

    # ---- schemas

    @property
    def names(self) -> list[str]:
        """Short names of the current schemas."""
        return sorted(n for n in self._current if "." not in n)

    def schema(self, name: str) -> WriterSchema:
        """The current schema of a record, by short or full name."""
        try:
            return self._current[name]
        except KeyError:
            raise KeyError(f"unknown Herald schema {name!r}; known: {', '.join(self.names)}") from None

    def add_writer_schema(self, schema: Mapping[str, Any] | str) -> bytes:
        """Make data written with another version of a record decodable in single-object framing
        (e.g. a producer's newer schema); returns its fingerprint. Its record must match a current
        schema by name (or alias) and resolve to it."""
        ws = WriterSchema.from_json(schema)
        if not any(r.answers_to(ws.full_name) for r in _parsed_current().values()):
            raise ValueError(f"{ws.full_name} is not a Herald record; known: {', '.join(self.names)}")
        with self._lock:
            self._by_fingerprint.setdefault(ws.fingerprint, ws)
        return ws.fingerprint

    def fingerprint(self, name: str) -> bytes:
        """Fingerprint (8 wire bytes) of the current schema of a record."""
        return self.schema(name).fingerprint

    # ---- encode

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encode a record with the current schema `name` ("LifecycleEvent"), framed."""
        try:
            ws = self._current[name]
        except KeyError:
            raise SchemaEncodeError(f"unknown Herald schema {name!r}; known: {', '.join(self.names)}") from None
        header = ws.header if self.registry is None else self._confluent_header(ws)
        if ws.uuid_fields:
            self._check_uuids(ws, record)
        buf = io.BytesIO()
        buf.write(header)
        try:
            schemaless_writer(buf, ws.parsed, record)
        except _RECORD_ERRORS as exc:
            raise self._encode_error(ws, record, exc) from exc
        return buf.getvalue()

    def encode_model(self, model: Any) -> bytes:
        """Encode a schemas.models record (anything with AVRO_NAME and to_avro())."""
        return self.encode(model.AVRO_NAME, model.to_avro())

    def register_all(self) -> dict[str, int]:
        """With a registry: register every schema now rather than on first encode, each subject's kept
        versions (schemas/history) oldest first and then the current one, so the registry holds the
        history in order and checks each step against its compatibility rule. Returns each subject's
        current schema id (empty without a registry)."""
        if self.registry is None:
            return {}
        for name, versions in _history_files().items():
            for raw in versions.values():
                self.registry.register(self._current[name].full_name, json.dumps(raw))
        return {self._current[name].full_name: int.from_bytes(self._confluent_header(self._current[name])[1:], "big")
                for name in self.names}

    def _confluent_header(self, ws: WriterSchema) -> bytes:
        header = self._confluent_headers.get(ws.full_name)
        if header is None:
            assert self.registry is not None
            schema_id = self.registry.register(ws.full_name, ws.raw)
            header = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
            with self._lock:
                self._confluent_headers[ws.full_name] = header
                self._by_id.setdefault(schema_id, ws)
        return header

    @staticmethod
    def _check_uuids(ws: WriterSchema, record: Mapping[str, Any]) -> None:
        for field in ws.uuid_fields:
            value = record.get(field) if isinstance(record, Mapping) else None
            if value.__class__ is str:
                try:
                    uuid.UUID(value)
                except ValueError:
                    raise SchemaEncodeError(
                        f"{ws.name}: field {field!r} must be a UUID, got {value!r}"
                    ) from None

    @staticmethod
    def _encode_error(ws: WriterSchema, record: Any, exc: Exception) -> SchemaEncodeError:
        if not isinstance(record, Mapping):
            return SchemaEncodeError(f"{ws.name}: expected a mapping of field values, got {type(record).__name__}")
        # Slow path only: fastavro's validator names the field that does not match.
        detail = ""
        try:
            validate(record, ws.parsed, raise_errors=True)
        except ValidationError as verr:
            detail = "; ".join(str(e) for e in verr.errors)
        except Exception:  # noqa: BLE001 - the writer's message is still there
            pass
        missing = [
            f["name"]
            for f in ws.raw["fields"]
            if f["name"] not in record and "default" not in f
        ]
        parts = [f"{ws.name}: record does not match the schema: {exc}"]
        if missing:
            parts.append(f"missing required field(s) {', '.join(missing)}")
        if detail:
            parts.append(detail)
        return SchemaEncodeError("; ".join(parts))

    # ---- decode

    def decode(self, data: bytes, name: str) -> dict[str, Any]:
        """Decode framed bytes into a dict of the current schema `name`.

        Raises SchemaDecodeError when the bytes are not a record of that type, in any framing and
        any known version.
        """
        try:
            reader = self._current[name]
        except KeyError:
            raise KeyError(f"unknown Herald schema {name!r}; known: {', '.join(self.names)}") from None
        writer, offset = self._writer(data)
        if writer is not reader and not reader.answers_to(writer.full_name):
            raise SchemaDecodeError(
                f"wrong record type: the payload is {writer.full_name}, expected {reader.full_name}"
            )
        return self._read(data, offset, writer, reader)

    def decode_any(self, data: bytes, names: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """Decode bytes of a topic that carries several record types; returns (short name, record).

        The writer schema's full name picks which of `names` to read it as.
        """
        writer, offset = self._writer(data)
        for name in names:
            try:
                reader = self._current[name]
            except KeyError:
                raise KeyError(f"unknown Herald schema {name!r}; known: {', '.join(self.names)}") from None
            if writer is reader or reader.answers_to(writer.full_name):
                return reader.name, self._read(data, offset, writer, reader)
        raise SchemaDecodeError(
            f"wrong record type: the payload is {writer.full_name}, expected one of {', '.join(names)}"
        )

    def writer_schema(self, data: bytes) -> WriterSchema:
        """The schema the bytes were written with (from their framing)."""
        return self._writer(data)[0]

    def _writer(self, data: bytes) -> tuple[WriterSchema, int]:
        if not data:
            raise SchemaDecodeError("empty payload: expected a framed Avro record")
        magic = data[0]
        if magic == 0xC3:
            if len(data) < 2:
                raise SchemaDecodeError(
                    f"truncated header: {len(data)} byte(s), single-object encoding needs {_SINGLE_OBJECT_HEADER_LEN}"
                )
            if data[1] != 0x01:
                raise SchemaDecodeError(
                    f"unknown magic bytes 0xc3 0x{data[1]:02x}: single-object encoding starts 0xc3 0x01"
                )
            if len(data) < _SINGLE_OBJECT_HEADER_LEN:
                raise SchemaDecodeError(
                    f"truncated header: {len(data)} byte(s), single-object encoding needs {_SINGLE_OBJECT_HEADER_LEN}"
                )
            fp = bytes(data[2:_SINGLE_OBJECT_HEADER_LEN])
            writer = self._by_fingerprint.get(fp)
            if writer is None:
                raise SchemaDecodeError(
                    f"unknown writer schema fingerprint {fp.hex()} "
                    f"(CRC-64-AVRO 0x{int.from_bytes(fp, 'little'):016x}): not a current or kept "
                    f"version in schemas/ nor an added writer schema"
                )
            return writer, _SINGLE_OBJECT_HEADER_LEN
        if magic == 0x00:
            if len(data) < _CONFLUENT_HEADER_LEN:
                raise SchemaDecodeError(
                    f"truncated header: {len(data)} byte(s), the Confluent wire format needs {_CONFLUENT_HEADER_LEN}"
                )
            schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
            writer = self._by_id.get(schema_id)
            if writer is None:
                writer = self._fetch_writer(schema_id)
            return writer, _CONFLUENT_HEADER_LEN
        raise SchemaDecodeError(
            f"unknown magic byte 0x{magic:02x}: expected 0xc3 0x01 (Avro single-object encoding) "
            f"or 0x00 (Confluent wire format)"
        )

    def _fetch_writer(self, schema_id: int) -> WriterSchema:
        if self.registry is None:
            raise SchemaDecodeError(
                f"Confluent-framed payload (schema id {schema_id}) but no schema registry is configured "
                f"(set HERALD_SCHEMA_REGISTRY_URL)"
            )
        try:
            schema = self.registry.schema_by_id(schema_id)
        except SchemaRegistryError as exc:
            if exc.status_code == 404:
                raise SchemaDecodeError(f"unknown schema id {schema_id}: {exc}") from exc
            raise RegistryUnavailableError(f"cannot fetch writer schema id {schema_id}: {exc}") from exc
        try:
            ws = WriterSchema.from_json(schema)
        except Exception as exc:  # noqa: BLE001 - whatever the registry holds, it is not ours
            raise SchemaDecodeError(f"schema id {schema_id} is not a usable Avro record schema: {exc}") from exc
        # The same schema as one we know: reuse it, so the current one keeps its fast path.
        ws = self._by_fingerprint.get(ws.fingerprint, ws)
        with self._lock:
            self._by_id.setdefault(schema_id, ws)
        return ws

    @staticmethod
    def _read(data: bytes, offset: int, writer: WriterSchema, reader: WriterSchema) -> dict[str, Any]:
        buf = io.BytesIO(data)
        buf.seek(offset)
        try:
            if writer is reader:
                record = schemaless_reader(buf, writer.parsed, None)
            else:
                record = schemaless_reader(buf, writer.parsed, reader.parsed)
        except SchemaResolutionError as exc:
            raise SchemaDecodeError(
                f"writer schema {writer.full_name} (fingerprint {writer.fingerprint.hex()}) "
                f"cannot be resolved to the current {reader.full_name}: {exc}"
            ) from exc
        except _BODY_ERRORS as exc:
            raise SchemaDecodeError(
                f"truncated or corrupt {writer.full_name} body ({len(data) - offset} bytes): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        end = buf.tell()
        if end != len(data):
            raise SchemaDecodeError(
                f"corrupt {writer.full_name} body: {len(data) - end} trailing byte(s) after the record"
            )
        return record


def _main() -> None:
    """`python -m schemas.serde`: print the fingerprint of every current and kept schema."""
    for name, ws in _parsed_current().items():
        print(f"{name:22} current  {ws.fingerprint.hex()}")
    for name, versions in _history_files().items():
        for version, raw in versions.items():
            print(f"{name:22} v{version:<7} {fingerprint(raw).hex()}")


if __name__ == "__main__":
    _main()
