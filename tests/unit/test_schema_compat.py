"""The schema contract: kept versions stay readable, shared named types agree, every field is documented."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from typing import Any

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro import parse_schema, schemaless_writer

from schemas.samples import covers, sample_record
from schemas.serde import NAMESPACE, AvroSerde, current_schemas, fingerprint, history_schemas

CURRENT = current_schemas()
HISTORY = history_schemas()
KEPT = [(name, version) for name, versions in HISTORY.items() for version in versions]
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _full(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


# --------------------------------------------------------------------------------------------------
# History


def test_history_layout() -> None:
    assert set(HISTORY) == set(CURRENT), "every schema has kept versions, and only schemas that exist"
    for name, versions in HISTORY.items():
        assert list(versions) == list(range(1, len(versions) + 1)), f"{name}: versions are 1..N"
        for version, schema in versions.items():
            assert schema["name"] == name, f"history/{name}.v{version}.avsc defines {schema['name']}"
        latest = max(versions)
        assert versions[latest] == CURRENT[name], (
            f"schemas/{name}.avsc differs from history/{name}.v{latest}.avsc: a changed schema is kept "
            f"as history/{name}.v{latest + 1}.avsc too (see schemas/README.md)"
        )


def _old_frame(old: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + fingerprint(old))
    schemaless_writer(buf, parse_schema(old, named_schemas={}), record)
    return buf.getvalue()


@pytest.mark.parametrize(("name", "version"), KEPT, ids=[f"{n}.v{v}" for n, v in KEPT])
def test_kept_version_is_readable_by_current(name: str, version: int) -> None:
    old, current = HISTORY[name][version], CURRENT[name]
    old_fields = {f["name"]: f for f in old["fields"]}
    serde = AvroSerde()  # knows every kept version's fingerprint
    for minimal in (False, True):
        for seed in range(3):
            record = sample_record(old, minimal=minimal, seed=seed)
            decoded = serde.decode(_old_frame(old, record), name)
            for field in current["fields"]:
                fname = field["name"]
                if fname in record and old_fields[fname]["type"] == field["type"]:
                    assert covers(decoded[fname], record[fname]), f"{name}.v{version}: {fname} changed on the way"
                elif fname not in old_fields:
                    assert "default" in field, f"{name}: field {fname} added after v{version} needs a default"
                    assert decoded[fname] == field["default"], f"{name}.v{version}: {fname} not defaulted"


@pytest.mark.parametrize(("name", "version"), KEPT, ids=[f"{n}.v{v}" for n, v in KEPT])
def test_kept_version_is_compatible_for_apache_avro(name: str, version: int) -> None:
    reader = avro.schema.parse(json.dumps(CURRENT[name]))
    writer = avro.schema.parse(json.dumps(HISTORY[name][version]))
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    assert result.compatibility is SchemaCompatibilityType.compatible, (result.messages, result.locations)


# --------------------------------------------------------------------------------------------------
# Named types and docs


def _walk(schema: Any, namespace: str | None, visit_named, visit_field) -> None:
    """Visit every named type definition and every record field of a schema."""
    if isinstance(schema, list):
        for branch in schema:
            _walk(branch, namespace, visit_named, visit_field)
        return
    if not isinstance(schema, dict):
        return
    t = schema.get("type")
    if t in ("record", "error", "enum", "fixed"):
        full = _full(schema["name"], schema.get("namespace", namespace))
        visit_named(full, schema, namespace)
        inner_ns = full.rpartition(".")[0] or None
        for field in schema.get("fields", ()):
            visit_field(full, field)
            _walk(field["type"], inner_ns, visit_named, visit_field)
    elif t == "array":
        _walk(schema["items"], namespace, visit_named, visit_field)
    elif t == "map":
        _walk(schema["values"], namespace, visit_named, visit_field)
    elif isinstance(t, (dict, list)):
        _walk(t, namespace, visit_named, visit_field)


def _normalized(schema: Any, namespace: str | None, top: bool = True) -> Any:
    """A named type's definition with nested named types (inline or referenced) as full names."""
    if isinstance(schema, str):
        return schema if schema in PRIMITIVES else _full(schema, namespace)
    if isinstance(schema, list):
        return [_normalized(b, namespace, False) for b in schema]
    t = schema.get("type")
    if t in ("record", "error", "enum", "fixed"):
        full = _full(schema["name"], schema.get("namespace", namespace))
        if not top:
            return full
        out = {k: v for k, v in schema.items() if k not in ("name", "namespace", "fields")}
        out["name"] = full
        if "fields" in schema:
            inner_ns = full.rpartition(".")[0] or None
            out["fields"] = [
                {**f, "type": _normalized(f["type"], inner_ns, False)} for f in schema["fields"]
            ]
        return out
    if t == "array":
        return {**schema, "items": _normalized(schema["items"], namespace, False)}
    if t == "map":
        return {**schema, "values": _normalized(schema["values"], namespace, False)}
    if isinstance(t, (dict, list)):
        return {**schema, "type": _normalized(t, namespace, False)}
    return schema


def test_shared_named_types_are_identical_everywhere() -> None:
    definitions: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for file_name, schema in CURRENT.items():
        def visit(full: str, definition: dict[str, Any], namespace: str | None, file_name=file_name) -> None:
            text = json.dumps(_normalized(definition, namespace), sort_keys=True)
            definitions[full][text].append(file_name)

        _walk(schema, None, visit, lambda *_: None)
    shared = {name: variants for name, variants in definitions.items() if sum(map(len, variants.values())) > 1}
    # Sanity: the types we know are shared are found.
    assert {f"{NAMESPACE}.{n}" for n in ("Recipient", "Channel", "Priority", "RenderedContent")} <= set(shared)
    for name, variants in shared.items():
        assert len(variants) == 1, f"{name} is defined differently in: " + " vs ".join(
            ", ".join(files) for files in variants.values()
        )


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_every_field_and_type_is_documented(name: str) -> None:
    undocumented: list[str] = []

    def named(full: str, definition: dict[str, Any], _ns: str | None) -> None:
        if not str(definition.get("doc", "")).strip():
            undocumented.append(full)

    def field(record: str, f: dict[str, Any]) -> None:
        if not str(f.get("doc", "")).strip():
            undocumented.append(f"{record}.{f['name']}")

    _walk(CURRENT[name], None, named, field)
    assert undocumented == []


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_namespace(name: str) -> None:
    schema = CURRENT[name]
    assert schema.get("namespace") == NAMESPACE
    assert "." not in schema["name"]
    outside: list[str] = []
    _walk(
        schema,
        None,
        lambda full, _d, _ns: None if full.rpartition(".")[0] == NAMESPACE else outside.append(full),
        lambda *_: None,
    )
    assert outside == []


def _default_fits(avro_type: Any, default: Any, named: dict[str, Any], namespace: str) -> bool:
    if isinstance(avro_type, list):  # a union's default is of its first branch
        return _default_fits(avro_type[0], default, named, namespace)
    if isinstance(avro_type, str) and avro_type not in PRIMITIVES:
        avro_type = named[_full(avro_type, namespace)]
    t = avro_type if isinstance(avro_type, str) else avro_type["type"]
    checks = {
        "null": lambda d: d is None,
        "boolean": lambda d: isinstance(d, bool),
        "int": lambda d: isinstance(d, int) and not isinstance(d, bool) and -(2**31) <= d < 2**31,
        "long": lambda d: isinstance(d, int) and not isinstance(d, bool) and -(2**63) <= d < 2**63,
        "float": lambda d: isinstance(d, (int, float)),
        "double": lambda d: isinstance(d, (int, float)),
        "bytes": lambda d: isinstance(d, str),
        "string": lambda d: isinstance(d, str),
        "enum": lambda d: d in avro_type["symbols"],
        "array": lambda d: isinstance(d, list)
        and all(_default_fits(avro_type["items"], x, named, namespace) for x in d),
        "map": lambda d: isinstance(d, dict)
        and all(_default_fits(avro_type["values"], x, named, namespace) for x in d.values()),
        "record": lambda d: isinstance(d, dict),
    }
    return checks[t](default)


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_defaults_fit_their_types(name: str) -> None:
    named: dict[str, Any] = {}
    fields: list[tuple[str, dict[str, Any]]] = []
    _walk(CURRENT[name], None, lambda full, d, _ns: named.__setitem__(full, d), lambda r, f: fields.append((r, f)))
    for record, f in fields:
        if "default" in f:
            assert _default_fits(f["type"], f["default"], named, NAMESPACE), f"{record}.{f['name']}"
    for full, definition in named.items():
        if definition["type"] == "enum" and "default" in definition:
            assert definition["default"] in definition["symbols"], full
