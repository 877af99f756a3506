"""schemas.models mirror schemas/*.avsc exactly (the drift test), and round-trip through the serde."""

from __future__ import annotations

import enum
import inspect
import types
import typing
import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Union

import annotated_types
import pytest
from pydantic import AfterValidator, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from schemas import models
from schemas.models import MODELS, AvroModel, Channel, LifecycleEvent, LifecycleStatus, Priority, utc_millis
from schemas.samples import resolve_named_types, sample_record
from schemas.serde import AvroSerde, current_schemas

SCHEMAS = current_schemas()
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


# --------------------------------------------------------------------------------------------------
# The drift test


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """Strip Annotated[...] and collect its metadata (pydantic FieldInfo metadata flattened)."""
    metadata = list(metadata)
    while typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata.extend(extra)
    flat: list[Any] = []
    for m in metadata:
        flat.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    return annotation, flat


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != len(args):
            assert len(rest) == 1, f"only ['null', X] unions are mirrored, got {annotation}"
            return rest[0], True
    return annotation, False


def _bounds(metadata: list[Any]) -> tuple[int | None, int | None]:
    ge = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
    le = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
    return ge, le


def _jsonish(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseModel):
        return {k: _jsonish(v) for k, v in value.model_dump().items()}
    if isinstance(value, list):
        return [_jsonish(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonish(v) for k, v in value.items()}
    return value


class DriftChecker:
    def __init__(self, root: dict[str, Any]) -> None:
        self.named = resolve_named_types(root)
        self.seen_models: set[type] = set()
        self.seen_enums: set[type] = set()

    def resolve(self, avro_type: Any, namespace: str) -> Any:
        if isinstance(avro_type, str) and avro_type not in {
            "null", "boolean", "int", "long", "float", "double", "bytes", "string"
        }:
            full = avro_type if "." in avro_type else f"{namespace}.{avro_type}"
            return self.named[full]
        if isinstance(avro_type, dict) and isinstance(avro_type.get("type"), (dict, list)):
            return avro_type["type"]
        return avro_type

    def record(self, model: type, schema: dict[str, Any], path: str) -> None:
        assert inspect.isclass(model) and issubclass(model, AvroModel), f"{path}: {model} is not a model"
        assert model.__name__ == schema["name"], f"{path}: model {model.__name__} mirrors record {schema['name']}"
        self.seen_models.add(model)
        namespace = schema.get("namespace", "io.herald")
        avro_fields = {f["name"]: f for f in schema["fields"]}
        assert list(model.model_fields) == list(avro_fields), f"{path}: fields (in order) differ"
        for name, field in avro_fields.items():
            info = model.model_fields[name]
            where = f"{path}.{name}"
            avro_type = self.resolve(field["type"], namespace)
            nullable = isinstance(avro_type, list) and "null" in avro_type
            annotation, metadata = _unwrap(info.annotation, info.metadata)
            inner, optional = _split_optional(annotation)
            assert optional == nullable, f"{where}: optional in the model iff nullable in Avro"
            if "default" in field:
                assert not info.is_required(), f"{where}: Avro has a default, the model requires it"
                default = info.get_default(call_default_factory=True)
                assert _jsonish(default) == field["default"], f"{where}: default {default!r} != {field['default']!r}"
            else:
                assert info.is_required(), f"{where}: Avro has no default, the model has one"
            if nullable:
                branches = [b for b in avro_type if b != "null"]
                assert len(branches) == 1, f"{where}: only ['null', X] unions are mirrored"
                avro_type = branches[0]
            self.type(inner, metadata, avro_type, namespace, where)

    def type(self, py: Any, metadata: list[Any], avro_type: Any, namespace: str, where: str) -> None:
        py, metadata = _unwrap(py, metadata)
        avro_type = self.resolve(avro_type, namespace)
        if isinstance(avro_type, str):
            avro_type = {"type": avro_type}
        t, logical = avro_type["type"], avro_type.get("logicalType")
        if logical == "uuid":
            assert py is uuid.UUID, f"{where}: uuid -> uuid.UUID, got {py}"
        elif logical == "timestamp-millis":
            assert py is datetime, f"{where}: timestamp-millis -> datetime, got {py}"
            assert any(isinstance(m, AfterValidator) and m.func is utc_millis for m in metadata), (
                f"{where}: timestamp-millis fields use TimestampMillis (UTC, whole ms)"
            )
        elif logical is not None:
            raise AssertionError(f"{where}: logical type {logical} has no mirror yet")
        elif t == "string":
            assert py is str, f"{where}: string -> str, got {py}"
        elif t in ("int", "long"):
            assert py is int, f"{where}: {t} -> int, got {py}"
            assert _bounds(metadata) == (INT32 if t == "int" else INT64), f"{where}: {t} range not checked"
        elif t == "boolean":
            assert py is bool, f"{where}: boolean -> bool, got {py}"
        elif t == "bytes":
            assert py is bytes, f"{where}: bytes -> bytes, got {py}"
        elif t in ("float", "double"):
            assert py is float, f"{where}: {t} -> float, got {py}"
        elif t == "enum":
            assert inspect.isclass(py) and issubclass(py, enum.StrEnum), f"{where}: enum -> StrEnum, got {py}"
            assert py.__name__ == avro_type["name"], f"{where}: enum {py.__name__} mirrors {avro_type['name']}"
            assert [m.value for m in py] == avro_type["symbols"], f"{where}: {py.__name__} members != symbols"
            assert [m.name for m in py] == avro_type["symbols"], f"{where}: member names are the symbols"
            self.seen_enums.add(py)
        elif t == "record":
            self.record(py, avro_type, where)
        elif t == "array":
            assert typing.get_origin(py) is list, f"{where}: array -> list, got {py}"
            (item,) = typing.get_args(py)
            self.type(item, [], avro_type["items"], namespace, f"{where}[]")
        elif t == "map":
            assert typing.get_origin(py) is dict, f"{where}: map -> dict, got {py}"
            key, value = typing.get_args(py)
            assert key is str, f"{where}: map keys are str"
            self.type(value, [], avro_type["values"], namespace, f"{where}{{}}")
        else:
            raise AssertionError(f"{where}: Avro type {t} has no mirror yet")


def test_every_schema_has_a_model() -> None:
    assert set(MODELS) == set(SCHEMAS)
    for name, model in MODELS.items():
        assert model.AVRO_NAME == name


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_model_matches_schema(name: str) -> None:
    DriftChecker(SCHEMAS[name]).record(MODELS[name], SCHEMAS[name], name)


def test_every_model_and_enum_mirrors_a_schema_type() -> None:
    seen: set[type] = set()
    for name in SCHEMAS:
        checker = DriftChecker(SCHEMAS[name])
        checker.record(MODELS[name], SCHEMAS[name], name)
        seen |= checker.seen_models | checker.seen_enums
    declared = {
        obj
        for obj in vars(models).values()
        if inspect.isclass(obj)
        and obj.__module__ == models.__name__
        and obj is not AvroModel
        and (issubclass(obj, AvroModel) or issubclass(obj, enum.Enum))
    }
    assert declared - seen == set(), "models or enums that mirror no Avro type"


# --------------------------------------------------------------------------------------------------
# Round trips


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("minimal", [False, True], ids=["full", "minimal"])
def test_model_round_trip(serde: AvroSerde, name: str, minimal: bool) -> None:
    model_cls = MODELS[name]
    for seed in range(3):
        model = model_cls.from_avro(sample_record(SCHEMAS[name], minimal=minimal, seed=seed))
        data = serde.encode(model_cls.AVRO_NAME, model.to_avro())
        assert model_cls.from_avro(serde.decode(data, name)) == model
        assert serde.encode_model(model) == data


def test_lifecycle_event_by_hand(serde: AvroSerde) -> None:
    event = LifecycleEvent(
        event_id=uuid.uuid4(),
        notification_id=uuid.uuid4(),
        status=LifecycleStatus.delivered,
        stage="deliver",
        channel=Channel.sms,
        provider="twilio",
        latency_ms=42,
        occurred_at=datetime(2024, 3, 1, 12, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
    )
    assert event.tenant == "default" and event.priority is Priority.normal and event.attempt == 0
    assert event.occurred_at == datetime(2024, 3, 1, 10, 30, 0, 123000, tzinfo=timezone.utc)
    record = serde.decode(serde.encode_model(event), "LifecycleEvent")
    assert record["status"] == "delivered" and record["channel"] == "sms" and record["error_code"] is None
    assert LifecycleEvent.from_avro(record) == event


def test_timestamps_are_utc_whole_milliseconds() -> None:
    assert utc_millis(datetime(2024, 1, 1, 0, 0, 0, 999999)) == datetime(2024, 1, 1, 0, 0, 0, 999000, tzinfo=timezone.utc)
    assert utc_millis(datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))).tzinfo is timezone.utc
    assert utc_millis(datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_models_validate_avro_ranges_and_symbols() -> None:
    base = dict(event_id=uuid.uuid4(), notification_id=uuid.uuid4(), status="sent", stage="deliver", occurred_at=datetime.now())
    LifecycleEvent(**base)
    for bad in ({"attempt": 2**31}, {"latency_ms": 2**63}, {"status": "exploded"}, {"event_id": "nope"}, {"surprise": 1}):
        with pytest.raises(ValidationError):
            LifecycleEvent(**dict(base, **bad))
