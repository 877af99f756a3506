"""Per-user state (streams/user_state.py) without Kafka: writes are outputs that go to their user's
partition, a batch reads its own writes, the table folds and forgets by partition, and the runtime
produces each write to the partition it names."""

import json
from pathlib import Path

from agents.validate import VALIDATE
from streams.codec import default_serde
from streams.runtime import StageRuntime
from streams.settings import Settings
from streams.stage import Context, Outputs
from streams.topics import TopicSpec
from streams.user_state import UserStateTable

CHANGELOG = TopicSpec("herald.state.test.users", (), "tests write and fold", compacted=True)


def table(tmp_path: Path) -> UserStateTable:
    return UserStateTable(Settings(data_dir=tmp_path), CHANGELOG)


def test_a_batch_reads_its_own_writes_and_the_last_write_of_a_user_wins(tmp_path: Path) -> None:
    users = table(tmp_path)
    users.apply(1, b"t/alice", b'{"n": 1}')
    out = Outputs("test", default_serde(), 1_000_000)
    assert out.pending_user_state(users, "t/alice") == {"n": 1}
    out.put_user_state(users, "t/alice", {"n": 2}, 1)
    out.put_user_state(users, "t/alice", {"n": 3}, 1)
    out.put_user_state(users, "t/bob", None, 3)
    assert out.pending_user_state(users, "t/alice") == {"n": 3}
    written = {(r.key, r.partition): r.value for r in out.user_state_records()}
    assert written == {(b"t/alice", 1): b'{"n":3}', (b"t/bob", 3): None}


def test_the_table_holds_users_by_partition_and_forgets_a_revoked_one(tmp_path: Path) -> None:
    users = table(tmp_path)
    users.loaded = {0, 1}
    users.apply(0, b"t/alice", json.dumps({"a": 1}).encode())
    users.apply(1, b"t/bob", json.dumps({"b": 1}).encode())
    users.apply(1, b"t/carol", b"not json")  # skipped, not fatal
    users.apply(1, b"t/bob", None)  # tombstone
    users.apply(1, b"t/dave", b"{}")
    assert dict(users.items()) == {"t/alice": {"a": 1}, "t/dave": {}}
    assert users.partition_of("t/dave") == 1
    users.forget([1])
    assert dict(users.items()) == {"t/alice": {"a": 1}} and users.loaded == {0}
    assert users.partition_of("t/dave") is None


def test_a_carried_batch_keeps_earlier_user_writes(tmp_path: Path) -> None:
    """Records handed over one by one after a batch raised still see what earlier ones wrote."""
    users = table(tmp_path)
    settings = Settings(data_dir=tmp_path)
    context = Context("test", settings, default_serde())
    earlier = context.outputs()
    earlier.put_user_state(users, "t/alice", {"seen": ["n1"]}, 2)
    context.carried = earlier
    assert context.outputs().pending_user_state(users, "t/alice") == {"seen": ["n1"]}


def test_the_runtime_produces_a_user_write_to_the_partition_it_names(tmp_path: Path) -> None:
    users = table(tmp_path)
    stage = StageRuntime(VALIDATE, Settings(data_dir=tmp_path))
    out = Outputs("test", default_serde(), 1_000_000)
    out.put_user_state(users, "t/alice", {"n": 1}, 3)
    assert stage.messages(out.user_state_records()) == [(CHANGELOG.name, b"t/alice", b'{"n":1}', 3)]
