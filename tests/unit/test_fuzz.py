"""Fuzzing the Avro decoder, the bundle codec and every stage's handler: hostile bytes and hostile
records never crash anything; each is decoded, handled, or dead-lettered with a reason.

A fixed seed and a few hundred inputs per property in `make test`; `make fuzz` runs 100,000 each
(HERALD_FUZZ_EXAMPLES) with a random seed.
"""

import asyncio
import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.registry import STAGES
from schemas.serde import SCHEMA_DIR, SchemaDecodeError
from streams.codec import default_serde
from streams.codec import bundle, unbundle
from streams.runtime import StageRuntime
from streams.settings import Settings
from streams.stage import StageSpec
from streams.tables import template_key
from streams.topics import DLQ
from tests.unit import records

SERDE = default_serde()
EXAMPLES = int(os.environ.get("HERALD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=EXAMPLES <= 1000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SCHEMAS = sorted(path.stem for path in SCHEMA_DIR.glob("*.avsc"))
HANDLED = [spec for spec in STAGES.values() if spec.handle is not None]

# A valid record of each schema a stage reads, to mutate.
VALID = {
    "NotificationRequest": records.request(),
    "NotificationBatch": records.batch(),
    "Notification": records.notification(template_version=None),
    "DeliveryTask": records.delivery_task(address="fuzz@example.com"),
}


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    """Bytes with some of them replaced, and maybe cut short: what a broken producer sends."""
    mutable = bytearray(data)
    for position, value in flips:
        if mutable:
            mutable[position % len(mutable)] = value
    return bytes(mutable[:cut] if cut is not None else mutable)


flips = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8)


@FUZZ
@given(data=st.binary(max_size=512), name=st.sampled_from(SCHEMAS))
def test_random_bytes_decode_or_raise_schema_decode_error(data: bytes, name: str) -> None:
    for framed in (data, b"\xc3\x01" + SERDE.fingerprint(name) + data):
        try:
            SERDE.decode(framed, name)
        except SchemaDecodeError:
            pass


@FUZZ
@given(name=st.sampled_from(sorted(VALID)), changes=flips, cut=st.none() | st.integers(0, 400))
def test_mutated_records_decode_or_raise_schema_decode_error(name: str, changes: list, cut: int | None) -> None:
    try:
        SERDE.decode(mutate(SERDE.encode(name, VALID[name]), changes, cut), name)
    except SchemaDecodeError:
        pass


@FUZZ
@given(data=st.binary(max_size=512), changes=flips)
def test_bundles_decode_or_raise_schema_decode_error(data: bytes, changes: list) -> None:
    for candidate in (data, mutate(bundle(SERDE, [(b"k", SERDE.encode("Notification", VALID["Notification"]))]), changes, None)):
        try:
            unbundle(SERDE, candidate)
        except SchemaDecodeError:
            pass


text = st.text(max_size=64)
hostile_strings = st.one_of(text, st.sampled_from(["", " ", "\r\n", "\x00", "a" * 5000, "{{ x }}", "é" * 300,
                                                   "a@b", "@", "<x@y>", "x@y, z@w", "*", "../../etc"]))


def hostile_record(name: str, draw_text: Any) -> dict[str, Any]:
    """A valid record of `name` whose string fields were replaced by hostile strings."""
    record = dict(VALID[name])
    for field in ("tenant", "template_id", "category", "idempotency_key", "address", "batch_id"):
        if field in record:
            record[field] = draw_text()
    if "recipient" in record:
        record["recipient"] = dict(record["recipient"], user_id=draw_text(), email=draw_text(), locale=draw_text())
    if "variables" in record:
        record["variables"] = {draw_text(): draw_text() for _ in range(3)}
    return record


def runtime_for(spec: StageSpec, tmp_path: Path) -> StageRuntime:
    stage = StageRuntime(spec, Settings(data_dir=tmp_path, retry_hold_s=0.0))
    if stage.context.templates is not None:
        stage.context.templates.fold(template_key("default", "welcome", "en", 1), records.template())
    if "email" in stage.context.services:
        stage.context.services = {"email": RefusingAdapter()}
    return stage


class RefusingAdapter:
    """Deliver's adapter stand-in: never reaches a network, answers from the address."""

    channel, provider = "email", "fuzz"

    async def send(self, task: dict[str, Any]) -> Any:
        from agents.channels.base import SENT, Outcome, Result
        from agents.channels.email import email_address

        try:
            email_address(task["address"])
        except ValueError as exc:
            return Outcome(Result.PERMANENT, "invalid_address", str(exc))
        return SENT


def message(topic: str, offset: int, value: bytes) -> Any:
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=0, offset=offset, key=b"k", value=value,
                                                   headers=[("h", None)]))


def test_every_handled_stage_is_fuzzed() -> None:
    assert {spec.inputs[0].schemas[0] for spec in HANDLED} <= set(VALID)


@FUZZ
@given(spec=st.sampled_from(HANDLED), data=st.data())
def test_stage_handlers_never_raise_on_hostile_records(spec: StageSpec, data: st.DataObject, tmp_path_factory: Any) -> None:
    stage = runtime_for(spec, tmp_path_factory.mktemp("fuzz"))
    source = spec.inputs[0]
    schema = source.schemas[0]
    values = []
    for offset in range(data.draw(st.integers(1, 4))):
        try:
            record = hostile_record(schema, lambda: data.draw(hostile_strings))
            record.setdefault("notification_id", uuid.uuid4())
            values.append(SERDE.encode(schema, record))
        except Exception:  # the record does not fit the schema: then send garbage in its place
            values.append(data.draw(st.binary(max_size=64)))
    if data.draw(st.booleans()):
        values.append(mutate(values[0], data.draw(flips), None))
    events = ([message(source.name, 0, bundle(SERDE, [(b"k", v) for v in values]))] if source.bundled
              else [message(source.name, i, v) for i, v in enumerate(values)])
    out, batch = asyncio.run(stage.decode_batch(source, events))
    out.extend(asyncio.run(stage.handle(batch)))
    # Every input is accounted for: handled (its outputs) or dead-lettered with a reason.
    letters = out.of(DLQ)
    assert all(letter["reason_code"] and letter["detail"] for letter in letters)
    assert len(batch) + sum(1 for letter in letters if letter["reason_code"] == "undecodable") >= len(values)
