"""streams/runtime.py and streams/codec.py without Kafka: decoding single records and RecordBundles,
dead letters for what does not decode (one bundled record alone), bundling outputs per partition in
order, and dead letters reduced to what the broker takes."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agents.validate import VALIDATE
from streams.codec import default_serde
from streams.codec import bundle, chunks, unbundle
from streams.runtime import StageRuntime, partition_for
from streams.settings import Settings
from streams.stage import Outgoing, Outputs
from streams.topics import ACCEPTED, DELIVER_BY_NAME, DLQ, EVENTS, REQUESTS, deliver_topic
from tests.unit import records

SERDE = default_serde()


def event(topic: str, offset: int, value: bytes | None, key: bytes | None = b"k",
          headers: list[tuple[str, bytes | None]] | None = None) -> Any:
    message = SimpleNamespace(topic=topic, partition=2, offset=offset, key=key, value=value, headers=headers or [])
    return SimpleNamespace(message=message)


def test_chunks_keep_order_and_bounds() -> None:
    items = [(str(i).encode(), b"x" * 100) for i in range(1000)]
    parts = chunks(items, max_records=300, max_bytes=10_000)
    assert [r for part in parts for r in part] == items
    assert all(len(part) <= 300 for part in parts)
    assert all(sum(len(v) + len(k) + 16 for k, v in part) + 32 <= 10_000 for part in parts)


def test_bundle_round_trips() -> None:
    items = [(b"a", b"1"), (None, b"2")]
    assert unbundle(SERDE, bundle(SERDE, items)) == items


def test_bundled_records_decode_alone_and_a_bad_one_is_dead_lettered_alone(tmp_path: Path) -> None:
    stage = StageRuntime(VALIDATE, Settings(data_dir=tmp_path))
    good = SERDE.encode("Notification", records.notification())
    message = bundle(SERDE, [(b"u1", good), (b"u2", b"\xc3\x01garbage"), (b"u3", good)])
    out = stage.context.outputs()
    batch = stage.decode(ACCEPTED, [event(ACCEPTED.name, 7, message), event(ACCEPTED.name, 8, b"not a bundle")], out)
    assert [(r.key, r.index, r.position) for r in batch] == [
        (b"u1", 0, "herald.accepted/2/7/0"), (b"u3", 2, "herald.accepted/2/7/2")]
    assert [(d["original_key"], d["offset"], d["reason_code"]) for d in out.of(DLQ)] == [
        (b"u2", 7, "undecodable"), (b"k", 8, "undecodable")]


def test_a_single_record_topic_decodes_each_schema(tmp_path: Path) -> None:
    stage = StageRuntime(VALIDATE, Settings(data_dir=tmp_path))
    out = stage.context.outputs()
    values = [SERDE.encode("NotificationRequest", records.request()), SERDE.encode("NotificationBatch", records.batch())]
    batch = stage.decode(REQUESTS, [event(REQUESTS.name, i, v) for i, v in enumerate(values)] +
                         [event(REQUESTS.name, 9, None, headers=[("h", None)])], out)
    assert [(r.schema, r.position) for r in batch] == [
        ("NotificationRequest", "herald.requests/2/0"), ("NotificationBatch", "herald.requests/2/1")]
    [letter] = out.of(DLQ)
    assert letter["headers"] == {"h": b""}  # a header without a value does not stop the dead letter


def test_key_ordered_outputs_are_bundled_per_partition_in_order(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, bundle_max_records=3)
    stage = StageRuntime(VALIDATE, settings)
    tasks = DELIVER_BY_NAME[deliver_topic("email")]
    keys = [f"user-{i % 5}".encode() for i in range(40)]
    outgoing = [Outgoing(tasks, key, f"{i}".encode()) for i, key in enumerate(keys)]
    outgoing.append(Outgoing(DLQ, b"x", b"letter"))
    messages = stage.messages(outgoing)
    assert ("herald.dlq", b"x", b"letter", None) in messages
    seen: dict[bytes, list[int]] = {}
    for topic, _, value, partition in messages:
        if topic != tasks.name:
            continue
        unbundled = unbundle(SERDE, value)
        assert len(unbundled) <= 3
        for key, record in unbundled:
            assert partition_for(key, settings.topic_partitions) == partition  # one key, one partition
            seen.setdefault(key, []).append(int(record))
    for key, order in seen.items():
        assert order == sorted(order), key  # per-key order holds
    assert sum(len(v) for v in seen.values()) == 40


def test_outputs_without_key_order_fill_as_few_bundles_as_fit(tmp_path: Path) -> None:
    stage = StageRuntime(VALIDATE, Settings(data_dir=tmp_path, bundle_max_records=10))
    outgoing = [Outgoing(EVENTS, f"n-{i}".encode(), f"{i}".encode()) for i in range(25)]
    messages = stage.messages(outgoing)
    assert [len(unbundle(SERDE, value)) for _, _, value, _ in messages] == [10, 10, 5]
    assert [int(v) for _, _, value, _ in messages for _, v in unbundle(SERDE, value)] == list(range(25))


def test_a_dead_letter_too_large_is_truncated_not_dropped() -> None:
    out = Outputs("validate", SERDE, max_record_bytes=10_000)
    out.dead_letter(None, "too_large", "huge", topic="herald.requests", key=b"k", value=b"v" * 50_000,
                    headers={"a": b"b" * 20_000})
    [record] = out.records
    assert len(record.value) <= 10_000
    [letter] = out.of(DLQ)
    assert letter["original_value"] == b"v" * len(letter["original_value"])
    assert "truncated" in letter["detail"]
