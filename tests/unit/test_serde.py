"""schemas.serde: both framings, schema resolution, registry client, errors, other Avro libraries."""

from __future__ import annotations

import io
import json
import random
import re
import socket
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro import parse_schema, schemaless_writer

from schemas.samples import covers, sample_record
from schemas.serde import (
    AvroSerde,
    RegistryUnavailableError,
    SchemaDecodeError,
    SchemaEncodeError,
    SchemaRegistry,
    current_schemas,
    fingerprint,
    history_schemas,
)
from streams.codec import default_serde
from tests.registry_standin import REGISTRY_CT, serve_registry

SCHEMAS = current_schemas()
NAMES = sorted(SCHEMAS)


@pytest.fixture(scope="module")
def registry_server():
    yield from serve_registry()


@pytest.fixture
def empty_registry_server():
    """A registry no other test has registered anything with."""
    yield from serve_registry()


@pytest.fixture
def registry(registry_server):
    client = SchemaRegistry(registry_server.url, timeout=5)
    yield client
    client.close()


@pytest.fixture(scope="module")
def plain() -> AvroSerde:
    return AvroSerde()


def body_of(data: bytes) -> bytes:
    return data[10:] if data[:1] == b"\xc3" else data[5:]


def fastavro_body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema, named_schemas={}), record)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_single_object(plain: AvroSerde, name: str) -> None:
    for seed in range(3):
        record = sample_record(SCHEMAS[name], seed=seed)
        data = plain.encode(name, record)
        assert data[:2] == b"\xc3\x01"
        assert data[2:10] == fingerprint(SCHEMAS[name]) == plain.fingerprint(name)
        assert plain.decode(data, name) == record
        assert plain.decode(data, f"io.herald.{name}") == record  # full names work too


@pytest.mark.parametrize("name", NAMES)
def test_minimal_record_gets_avro_defaults(plain: AvroSerde, name: str) -> None:
    minimal = sample_record(SCHEMAS[name], minimal=True)
    decoded = plain.decode(plain.encode(name, minimal), name)
    for field in SCHEMAS[name]["fields"]:
        if "default" in field:
            assert decoded[field["name"]] == field["default"], field["name"]
        else:  # nested records got their defaults too
            assert covers(decoded[field["name"]], minimal[field["name"]]), field["name"]
    # Decoded records encode back to the same bytes.
    assert plain.encode(name, decoded) == plain.encode(name, minimal)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_confluent(registry_server, registry: SchemaRegistry, name: str) -> None:
    serde = AvroSerde(registry)
    record = sample_record(SCHEMAS[name], seed=1)
    data = serde.encode(name, record)
    assert data[0] == 0
    schema_id = int.from_bytes(data[1:5], "big")
    state = registry_server.state
    assert schema_id in state.subjects[f"io.herald.{name}"]  # RecordNameStrategy
    assert json.loads(state.schemas[schema_id]) == SCHEMAS[name]
    assert serde.decode(data, name) == record

    # A fresh process (fresh client and serde) fetches the writer schema by id.
    gets = state.count("GET", f"/schemas/ids/{schema_id}")
    other_client = SchemaRegistry(registry_server.url)
    try:
        assert AvroSerde(other_client).decode(data, name) == record
        assert state.count("GET", f"/schemas/ids/{schema_id}") == gets + 1
    finally:
        other_client.close()


def test_registry_requests_are_cached_and_typed(registry_server, registry: SchemaRegistry) -> None:
    state = registry_server.state
    serde = AvroSerde(registry)
    before_post = state.count("POST", "/subjects/io.herald.LifecycleEvent/")
    record = sample_record(SCHEMAS["LifecycleEvent"])
    frames = [serde.encode("LifecycleEvent", record) for _ in range(50)]
    assert state.count("POST", "/subjects/io.herald.LifecycleEvent/") == before_post + 1
    posts = [ct for m, p, ct in state.requests if m == "POST"]
    assert posts and all(ct == REGISTRY_CT for ct in posts)
    # Decoding our own frames needs no GET: the id is known from registering.
    gets = state.count("GET", "/")
    for frame in frames:
        serde.decode(frame, "LifecycleEvent")
    assert state.count("GET", "/") == gets
    # The client caches too: the same schema under the same subject is registered once.
    other = SchemaRegistry(registry_server.url)
    try:
        posts_before = state.count("POST", "/")
        assert other.register("io.herald.X", '{"type": "string"}') == other.register("io.herald.X", {"type": "string"})
        assert state.count("POST", "/") == posts_before + 1
    finally:
        other.close()


def test_register_all(empty_registry_server) -> None:
    registry_server = empty_registry_server
    registry = SchemaRegistry(registry_server.url, timeout=5)
    ids = AvroSerde(registry).register_all()
    registry.close()
    subjects = registry_server.state.subjects
    assert {f"io.herald.{n}" for n in NAMES} == set(ids) <= set(subjects)
    # Kept versions first, oldest first, then the current one: the registry sees the history in order.
    expected: list[dict] = []
    for schema in [*history_schemas()["LifecycleEvent"].values(), SCHEMAS["LifecycleEvent"]]:
        if schema not in expected:  # a kept version equal to the current one is the same registry version
            expected.append(schema)
    versions = [json.loads(registry_server.state.schemas[i]) for i in subjects["io.herald.LifecycleEvent"]]
    assert len(expected) > 1 and versions == expected
    assert subjects["io.herald.LifecycleEvent"][-1] == ids["io.herald.LifecycleEvent"]


def test_herald_schemas_register(registry_server, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from streams.codec import default_serde
    from streams.settings import get_settings
    from tooling.cli import app

    monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_URL", registry_server.url)
    get_settings.cache_clear()
    default_serde.cache_clear()
    try:
        done = CliRunner().invoke(app, ["schemas", "register"])
    finally:
        get_settings.cache_clear()
        default_serde.cache_clear()
    assert done.exit_code == 0, done.output
    assert f"{len(NAMES)} subjects registered" in done.output
    assert "io.herald.NotificationRequest" in done.output


def test_decoder_accepts_both_framings(registry: SchemaRegistry, plain: AvroSerde) -> None:
    confluent = AvroSerde(registry)
    record = sample_record(SCHEMAS["DeliveryTask"], seed=5)
    single = plain.encode("DeliveryTask", record)
    framed = confluent.encode("DeliveryTask", record)
    assert body_of(single) == body_of(framed)
    assert confluent.decode(single, "DeliveryTask") == record
    assert confluent.decode(framed, "DeliveryTask") == record
    with pytest.raises(SchemaDecodeError, match=r"schema id \d+.*no schema registry"):
        plain.decode(framed, "DeliveryTask")


def test_decode_any_picks_the_writer_record(plain: AvroSerde, registry: SchemaRegistry) -> None:
    names = ("NotificationRequest", "NotificationBatch")
    for serde in (plain, AvroSerde(registry)):
        for name in names:
            record = sample_record(SCHEMAS[name], seed=2)
            assert serde.decode_any(serde.encode(name, record), names) == (name, record)
        event = serde.encode("LifecycleEvent", sample_record(SCHEMAS["LifecycleEvent"]))
        with pytest.raises(SchemaDecodeError, match="io.herald.LifecycleEvent, expected one of NotificationRequest, NotificationBatch"):
            serde.decode_any(event, names)


def test_decode_wrong_record_type(plain: AvroSerde) -> None:
    data = plain.encode("LifecycleEvent", sample_record(SCHEMAS["LifecycleEvent"]))
    with pytest.raises(SchemaDecodeError, match="wrong record type: the payload is io.herald.LifecycleEvent, expected io.herald.Notification"):
        plain.decode(data, "Notification")


def test_decode_unknown_name_is_a_programming_error(plain: AvroSerde) -> None:
    data = plain.encode("LifecycleEvent", sample_record(SCHEMAS["LifecycleEvent"]))
    with pytest.raises(KeyError, match="unknown Herald schema 'Nope'"):
        plain.decode(data, "Nope")


# --------------------------------------------------------------------------------------------------
# Foreign writer schemas (another producer's version of a record)


def with_added_field(schema: dict[str, Any]) -> dict[str, Any]:
    foreign = json.loads(json.dumps(schema))
    foreign["fields"].insert(3, {"name": "region", "type": "string", "default": "eu-west", "doc": "New."})
    foreign["fields"].append({"name": "score", "type": ["null", "double"], "default": None, "doc": "New."})
    return foreign


def without_defaulted_field(schema: dict[str, Any], field: str) -> dict[str, Any]:
    foreign = json.loads(json.dumps(schema))
    foreign["fields"] = [f for f in foreign["fields"] if f["name"] != field]
    return foreign


def test_foreign_writer_single_object() -> None:
    serde = AvroSerde()
    current = SCHEMAS["LifecycleEvent"]
    record = sample_record(current, seed=9)

    # A newer producer added fields (with defaults): we drop them.
    added = with_added_field(current)
    data = b"\xc3\x01" + fingerprint(added) + fastavro_body(added, dict(record, region="ap", score=0.5))
    with pytest.raises(SchemaDecodeError, match=f"unknown writer schema fingerprint {fingerprint(added).hex()}"):
        serde.decode(data, "LifecycleEvent")
    assert serde.add_writer_schema(added) == fingerprint(added)
    assert serde.decode(data, "LifecycleEvent") == record

    # An older producer lacks a field that has a default: we fill it in.
    removed = without_defaulted_field(current, "tenant")
    serde.add_writer_schema(json.dumps(removed))  # JSON text works too
    body = fastavro_body(removed, {k: v for k, v in record.items() if k != "tenant"})
    decoded = serde.decode(b"\xc3\x01" + fingerprint(removed) + body, "LifecycleEvent")
    assert decoded == dict(record, tenant="default")

    # Another serde instance does not see writer schemas added to this one.
    with pytest.raises(SchemaDecodeError, match="unknown writer schema fingerprint"):
        AvroSerde().decode(data, "LifecycleEvent")


def test_foreign_writer_confluent(registry: SchemaRegistry) -> None:
    current = SCHEMAS["Notification"]
    record = sample_record(current, seed=4)
    serde = AvroSerde(registry)

    added = with_added_field(current)
    schema_id = registry.register("io.herald.Notification", added)
    data = b"\x00" + schema_id.to_bytes(4, "big") + fastavro_body(added, dict(record, region="x", score=None))
    assert serde.decode(data, "Notification") == record

    removed = without_defaulted_field(current, "rendered")
    schema_id = registry.register("io.herald.Notification", removed)
    body = fastavro_body(removed, {k: v for k, v in record.items() if k != "rendered"})
    assert serde.decode(b"\x00" + schema_id.to_bytes(4, "big") + body, "Notification") == dict(record, rendered=[])


def test_unresolvable_writer_schema() -> None:
    serde = AvroSerde()
    current = SCHEMAS["LifecycleEvent"]
    incompatible = json.loads(json.dumps(current))
    for field in incompatible["fields"]:
        if field["name"] == "stage":
            field["type"] = "boolean"
    serde.add_writer_schema(incompatible)
    record = dict(sample_record(current), stage=True)
    data = b"\xc3\x01" + fingerprint(incompatible) + fastavro_body(incompatible, record)
    with pytest.raises(SchemaDecodeError, match="writer schema io.herald.LifecycleEvent .* cannot be resolved to the current io.herald.LifecycleEvent"):
        serde.decode(data, "LifecycleEvent")


def test_add_writer_schema_rejects_other_records() -> None:
    with pytest.raises(ValueError, match="io.elsewhere.Thing is not a Herald record"):
        AvroSerde().add_writer_schema(
            {"type": "record", "name": "Thing", "namespace": "io.elsewhere", "fields": []}
        )


# --------------------------------------------------------------------------------------------------
# Bad payloads


@pytest.fixture(scope="module")
def event_bytes(plain: AvroSerde) -> bytes:
    return plain.encode("LifecycleEvent", sample_record(SCHEMAS["LifecycleEvent"], seed=11))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty payload"),
        (b"\x07abcdefghijkl", "unknown magic byte 0x07"),
        (b"{\"json\": true}", "unknown magic byte 0x7b"),
        (b"\xc3", "truncated header: 1 byte"),
        (b"\xc3\x02" + bytes(12), "unknown magic bytes 0xc3 0x02"),
        (b"\xc3\x01\x8c\xf2\x97", "truncated header: 5 byte(s), single-object encoding needs 10"),
        (b"\x00\x00\x01", "truncated header: 3 byte(s), the Confluent wire format needs 5"),
        (b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + b"\x02", "unknown writer schema fingerprint 0123456789abcdef (CRC-64-AVRO 0xefcdab8967452301)"),
    ],
)
def test_bad_headers(plain: AvroSerde, payload: bytes, message: str) -> None:
    with pytest.raises(SchemaDecodeError) as info:
        plain.decode(payload, "LifecycleEvent")
    assert message in str(info.value)


def test_truncated_and_corrupt_bodies(plain: AvroSerde, event_bytes: bytes) -> None:
    for cut in (10, 11, 30, len(event_bytes) // 2, len(event_bytes) - 1):
        with pytest.raises(SchemaDecodeError, match=r"truncated or corrupt io.herald.LifecycleEvent body"):
            plain.decode(event_bytes[:cut], "LifecycleEvent")
    with pytest.raises(SchemaDecodeError, match="2 trailing byte"):
        plain.decode(event_bytes + b"\x00\x00", "LifecycleEvent")
    # The first body byte is event_id's string length (36, zigzag 0x48); 0x01 is a negative length.
    bad = bytearray(event_bytes)
    bad[10] = 0x01
    with pytest.raises(SchemaDecodeError, match="truncated or corrupt"):
        plain.decode(bytes(bad), "LifecycleEvent")
    # A character of the uuid string: not a UUID any more.
    bad = bytearray(event_bytes)
    bad[12] = ord("z")
    with pytest.raises(SchemaDecodeError, match="truncated or corrupt"):
        plain.decode(bytes(bad), "LifecycleEvent")


def test_random_corruption_only_raises_schema_decode_error(plain: AvroSerde) -> None:
    rng = random.Random(1234)
    frames = [plain.encode(n, sample_record(SCHEMAS[n], seed=1)) for n in NAMES]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(3000):
        name_index = rng.randrange(len(frames))
        data = bytearray(frames[name_index])
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(10, len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(10, len(data)) :]
        try:
            plain.decode(bytes(data), NAMES[name_index])
            outcomes["ok"] += 1
        except SchemaDecodeError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0


def test_unknown_schema_id_and_unreachable_registry(registry: SchemaRegistry) -> None:
    with pytest.raises(SchemaDecodeError, match=r"unknown schema id 999999.*40403"):
        AvroSerde(registry).decode(b"\x00" + (999999).to_bytes(4, "big") + b"\x02", "LifecycleEvent")
    down = SchemaRegistry(f"http://127.0.0.1:{free_port()}", timeout=1)
    try:
        with pytest.raises(RegistryUnavailableError, match="cannot fetch writer schema id 5"):
            AvroSerde(down).decode(b"\x00\x00\x00\x00\x05\x02", "LifecycleEvent")
    finally:
        down.close()


# --------------------------------------------------------------------------------------------------
# Bad records


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stage": None}, "stage"),
        ({"status": "exploded"}, "status"),
        ({"attempt": "three"}, "attempt"),
        ({"latency_ms": 2**70}, "latency_ms"),
        ({"event_id": "not-a-uuid"}, "field 'event_id' must be a UUID"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
    ],
)
def test_encode_errors_name_the_field(plain: AvroSerde, change: dict[str, Any], message: str) -> None:
    record = dict(sample_record(SCHEMAS["LifecycleEvent"]), **change)
    with pytest.raises(SchemaEncodeError) as info:
        plain.encode("LifecycleEvent", record)
    assert message in str(info.value)
    assert str(info.value).startswith("LifecycleEvent")


def test_encode_missing_required_field(plain: AvroSerde) -> None:
    record = sample_record(SCHEMAS["DeliveryTask"])
    del record["address"]
    with pytest.raises(SchemaEncodeError, match="missing required field.*address"):
        plain.encode("DeliveryTask", record)
    record = sample_record(SCHEMAS["DeliveryTask"])
    del record["recipient"]["user_id"]
    with pytest.raises(SchemaEncodeError, match="user_id"):
        plain.encode("DeliveryTask", record)


def test_encode_unknown_schema(plain: AvroSerde) -> None:
    with pytest.raises(SchemaEncodeError, match="unknown Herald schema 'Nope'"):
        plain.encode("Nope", {})


# --------------------------------------------------------------------------------------------------
# Other Avro implementations


def test_fingerprint_matches_the_avro_spec_vector() -> None:
    # Apache Avro's own test vector (lang/ruby/test/test_fingerprints.rb, Java SchemaNormalization):
    # CRC-64-AVRO of "int" is 8247732601305521295 = 0x7275d51a3f395c8f, written little-endian in the
    # single-object header as c3 01 8f 5c 39 3f 1a d5 75 72.
    assert fingerprint("int") == (0x7275D51A3F395C8F).to_bytes(8, "little")
    assert fingerprint({"type": "int"}) == bytes.fromhex("8f5c393f1ad57572")
    assert avro.schema.parse('"int"').fingerprint() == fingerprint("int")


def test_fingerprint_matches_the_avro_package() -> None:
    # Without logical types the official Python library computes the same fingerprint.
    recipient = json.loads(json.dumps(SCHEMAS["NotificationRequest"]["fields"][4]["type"]))
    recipient["namespace"] = "io.herald"
    assert recipient["name"] == "Recipient"
    assert avro.schema.parse(json.dumps(recipient)).fingerprint() == fingerprint(recipient)


@pytest.mark.parametrize("name", NAMES)
def test_canonical_form_matches_the_avro_package(name: str) -> None:
    ours = AvroSerde().schema(name)
    # The Python avro package (1.12) keeps {"type":"string"} for logical types where the spec and the
    # Java implementation write "string"; otherwise its canonical form is ours.
    theirs = avro.schema.parse(json.dumps(SCHEMAS[name])).canonical_form
    assert re.sub(r'\{"type":"(string|long|int|bytes)"\}', r'"\1"', theirs) == ours.canonical_form
    # And it fingerprints the spec's canonical form exactly as we do.
    assert avro.schema.parse(ours.canonical_form).fingerprint() == ours.fingerprint


def _avro_equal(ours: Any, theirs: Any) -> bool:
    """avro (python) returns uuid logical values as str; fastavro as uuid.UUID."""
    if isinstance(ours, dict):
        return ours.keys() == theirs.keys() and all(_avro_equal(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list):
        return len(ours) == len(theirs) and all(_avro_equal(a, b) for a, b in zip(ours, theirs))
    if ours.__class__.__name__ == "UUID":
        return str(ours) == str(theirs)
    return ours == theirs


@pytest.mark.parametrize("name", NAMES)
def test_avro_package_reads_our_body_and_we_read_its(plain: AvroSerde, name: str) -> None:
    schema = avro.schema.parse(json.dumps(SCHEMAS[name]))
    record = sample_record(SCHEMAS[name], seed=7)
    data = plain.encode(name, record)
    theirs = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))
    assert _avro_equal(record, theirs)

    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(theirs, avro.io.BinaryEncoder(buf))
    assert buf.getvalue() == data[10:]
    assert plain.decode(b"\xc3\x01" + fingerprint(SCHEMAS[name]) + buf.getvalue(), name) == record


# --------------------------------------------------------------------------------------------------
# Process-wide serde


def test_default_serde_follows_settings(monkeypatch: pytest.MonkeyPatch, registry_server) -> None:
    from streams.settings import get_settings

    try:
        monkeypatch.delenv("HERALD_SCHEMA_REGISTRY_URL", raising=False)
        get_settings.cache_clear()
        default_serde.cache_clear()
        serde = default_serde()
        assert serde.registry is None and default_serde() is serde

        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_URL", registry_server.url)
        get_settings.cache_clear()
        default_serde.cache_clear()
        serde = default_serde()
        assert serde.registry is not None and serde.registry.url == registry_server.url
        assert serde.encode("LifecycleEvent", sample_record(SCHEMAS["LifecycleEvent"]))[0] == 0
        serde.registry.close()
    finally:
        get_settings.cache_clear()
        default_serde.cache_clear()
