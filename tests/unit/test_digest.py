"""Digests without Kafka: the template stage sends a digest template's notifications to herald.digest
and renders a digest's items; the digest stage (agents/digest.py) gathers them per user and window,
once each, and sends one digest with a derived id when the window is full or its time is up."""

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from agents.digest import DIGEST_STAGE, close_due
from agents.template import TEMPLATE, template_problems
from streams.codec import default_serde
from streams.runtime import StageRuntime
from streams.settings import Settings
from streams.stage import Incoming, Outputs
from streams.tables import cancellation_key, template_key
from streams.topics import DIGEST, DIGEST_USERS, EVENTS, RENDERED, VALIDATED
from tests.unit import records

SERDE = default_serde()
DIGEST_PART = records.part(
    "email", subject="{{ count }} new comments on {{ project }}", html=None,
    text="{% for item in items %}{{ item.author }}: {{ item.comment }}\n{% endfor %}")


def comments(window_s: int = 10, max_items: int = 100, key: str | None = "project") -> dict[str, Any]:
    return records.template("comments", parts=[DIGEST_PART], variables=["project", "author", "comment"],
                            digest={"key": key, "window_s": window_s, "max_items": max_items})


def comment(n: int, user_id: str = "alice", project: str = "apollo") -> dict[str, Any]:
    return records.notification(
        notification_id=uuid.uuid5(records.NOTIFICATION_ID, f"{user_id}/{n}"), template_id="comments",
        template_version=None, recipient=records.recipient(user_id=user_id, email=f"{user_id}@example.com"),
        variables={"project": project, "author": f"author {n}", "comment": f"comment {n}"}, rendered=[])


def stage(spec: Any, tmp_path: Path, template: dict[str, Any], **settings: Any) -> StageRuntime:
    runtime = StageRuntime(spec, Settings(data_dir=tmp_path, **settings))
    assert runtime.context.templates is not None
    runtime.context.templates.fold(template_key(template["tenant"], template["template_id"], "en", 1), template)
    return runtime


def incoming(notification: dict[str, Any], offset: int, partition: int = 2) -> Incoming:
    return Incoming(key=f"acme/{notification['recipient']['user_id']}".encode(), value=notification,
                    schema="Notification", topic=DIGEST.name, partition=partition, offset=offset,
                    raw=SERDE.encode("Notification", notification))


def apply(runtime: StageRuntime, out: Outputs) -> None:
    """What the runtime does once the broker acknowledged a batch's outputs."""
    table = runtime.context.user_state[DIGEST_USERS.name]
    for write in out.user_state_records():
        table.apply(write.partition, write.key, write.value)


async def gather(runtime: StageRuntime, notifications: list[dict[str, Any]], first_offset: int = 0) -> Outputs:
    out = await runtime.handle([incoming(n, first_offset + i) for i, n in enumerate(notifications)])
    apply(runtime, out)
    return out


def later(runtime: StageRuntime, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Move the digest stage's clock on."""
    now = records.RECEIVED_AT + timedelta(seconds=seconds)
    monkeypatch.setattr("agents.digest.now_utc", lambda: now)


def tick(runtime: StageRuntime) -> Outputs:
    out = close_due(runtime.context)
    apply(runtime, out)
    return out


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr("agents.digest.now_utc", lambda: records.RECEIVED_AT)
    return monkeypatch


async def test_the_template_stage_sends_a_digest_templates_notification_to_the_digest_stage(tmp_path: Path) -> None:
    runtime = stage(TEMPLATE, tmp_path, comments())
    record = Incoming(key=b"k", value=comment(1), schema="Notification", topic=VALIDATED.name, partition=0,
                      offset=0, raw=b"")
    out = await runtime.handle([record])
    assert out.of(RENDERED) == [] and out.of(EVENTS) == []
    [sent] = [r for r in out.records if r.topic == DIGEST]
    assert sent.key == b"acme/alice"
    assert SERDE.decode(sent.value, "Notification")["notification_id"] == comment(1)["notification_id"]


async def test_the_template_stage_renders_a_digest_with_its_items_and_count(tmp_path: Path) -> None:
    runtime = stage(TEMPLATE, tmp_path, comments())
    digest = comment(1) | {"digest_items": [comment(n)["variables"] for n in (1, 2, 3)]}
    record = Incoming(key=b"k", value=digest, schema="Notification", topic=VALIDATED.name, partition=0,
                      offset=0, raw=b"")
    out = await runtime.handle([record])
    [rendered] = out.of(RENDERED)
    [email] = rendered["rendered"]
    assert email["subject"] == "3 new comments on apollo"
    assert email["text"] == "author 1: comment 1\nauthor 2: comment 2\nauthor 3: comment 3\n"


async def test_a_users_notifications_become_one_digest_when_the_window_closes(
        tmp_path: Path, clock: pytest.MonkeyPatch) -> None:
    runtime = stage(DIGEST_STAGE, tmp_path, comments(window_s=10))
    out = await gather(runtime, [comment(n) for n in range(25)] + [comment(0, "bob")])
    assert out.of(VALIDATED) == []
    digested = [e for e in out.of(EVENTS) if e["status"] == "digested"]
    assert len(digested) == 26
    assert len({e["detail"] for e in digested}) == 2  # alice's digest and bob's
    users = runtime.context.user_state[DIGEST_USERS.name]
    assert users.partition_of("acme/alice") == 2 and users.partition_of("acme/bob") == 2

    later(runtime, 9.9, clock)
    assert tick(runtime).of(VALIDATED) == []
    later(runtime, 10, clock)
    digests = {d["recipient"]["user_id"]: d for d in tick(runtime).of(VALIDATED)}
    assert set(digests) == {"alice", "bob"}
    alice = digests["alice"]
    assert alice["digest_items"] == [comment(n)["variables"] for n in range(25)]
    assert alice["template_id"] == "comments" and alice["recipient"]["email"] == "alice@example.com"
    assert f"digest {alice['notification_id']}" in {e["detail"] for e in digested}
    assert len(digests["bob"]["digest_items"]) == 1
    assert tick(runtime).of(VALIDATED) == []  # sent once


async def test_a_record_read_again_is_gathered_once_and_the_digest_keeps_its_id(
        tmp_path: Path, clock: pytest.MonkeyPatch) -> None:
    """At-least-once: the same records again (before or after the window closed) add nothing, and a
    window closed again after a crash sends a digest with the same id (deliver sends it once)."""
    notifications = [comment(n) for n in range(5)]
    runtime = stage(DIGEST_STAGE, tmp_path, comments(window_s=10))
    await gather(runtime, notifications)
    await gather(runtime, notifications[2:])  # read again: no offset committed yet
    later(runtime, 10, clock)
    users = runtime.context.user_state[DIGEST_USERS.name]
    before_close = users.get("acme/alice")
    [digest] = tick(runtime).of(VALIDATED)
    assert len(digest["digest_items"]) == 5

    out = await gather(runtime, notifications[3:])  # read again after the window closed
    assert out.of(VALIDATED) == [] and users.get("acme/alice")["open"] == {}
    assert {e["detail"] for e in out.of(EVENTS)} == {f"digest {digest['notification_id']}"}

    users.apply(2, b"acme/alice", users.encode(before_close))  # the window's deletion was lost in a crash
    [again] = tick(runtime).of(VALIDATED)
    assert again["notification_id"] == digest["notification_id"]

    elsewhere = stage(DIGEST_STAGE, tmp_path / "other", comments(window_s=10))  # a fresh worker, same records
    await gather(elsewhere, notifications)
    later(elsewhere, 20, clock)  # its window opened at 10 s
    [same] = tick(elsewhere).of(VALIDATED)
    assert same["notification_id"] == digest["notification_id"]


async def test_a_full_window_is_sent_at_once_and_the_next_notification_opens_a_new_one(
        tmp_path: Path, clock: pytest.MonkeyPatch) -> None:
    runtime = stage(DIGEST_STAGE, tmp_path, comments(window_s=60, max_items=3))
    out = await gather(runtime, [comment(n) for n in range(4)])
    [digest] = out.of(VALIDATED)
    assert [item["author"] for item in digest["digest_items"]] == ["author 0", "author 1", "author 2"]
    accepted = [e for e in out.of(EVENTS) if e["status"] == "accepted"]
    assert [e["notification_id"] for e in accepted] == [digest["notification_id"]]
    later(runtime, 60, clock)
    [rest] = tick(runtime).of(VALIDATED)
    assert rest["digest_items"] == [comment(3)["variables"]] and rest["notification_id"] != digest["notification_id"]


async def test_the_digest_key_separates_windows(tmp_path: Path, clock: pytest.MonkeyPatch) -> None:
    runtime = stage(DIGEST_STAGE, tmp_path, comments(window_s=10))
    await gather(runtime, [comment(1, project="apollo"), comment(2, project="gemini"), comment(3, project="apollo")])
    later(runtime, 10, clock)
    digests = {d["variables"]["project"]: len(d["digest_items"]) for d in tick(runtime).of(VALIDATED)}
    assert digests == {"apollo": 2, "gemini": 1}


async def test_a_window_never_grows_past_what_one_record_holds(tmp_path: Path, clock: pytest.MonkeyPatch) -> None:
    runtime = stage(DIGEST_STAGE, tmp_path, comments(window_s=10), max_message_bytes=40_000)
    big = [comment(n) | {"variables": {"project": "apollo", "author": "a", "comment": "x" * 4000}} for n in range(5)]
    out = await gather(runtime, big)
    sent = out.of(VALIDATED)
    assert [len(d["digest_items"]) for d in sent] == [2, 2]  # a quarter of a 39 kB record: two items
    later(runtime, 10, clock)
    assert [len(d["digest_items"]) for d in tick(runtime).of(VALIDATED)] == [1]


async def test_a_notification_whose_template_has_no_digest_any_more_is_rendered_alone(
        tmp_path: Path, clock: pytest.MonkeyPatch) -> None:
    runtime = stage(DIGEST_STAGE, tmp_path, comments() | {"digest": None})
    out = await gather(runtime, [comment(1)])
    assert [n["notification_id"] for n in out.of(VALIDATED)] == [comment(1)["notification_id"]]
    assert runtime.context.user_state[DIGEST_USERS.name].get("acme/alice") is None


async def test_remembered_ids_are_forgotten_after_their_time_and_the_state_deleted(
        tmp_path: Path, clock: pytest.MonkeyPatch) -> None:
    runtime = stage(DIGEST_STAGE, tmp_path, comments(window_s=10), digest_sent_memory_s=60)
    await gather(runtime, [comment(1)])
    later(runtime, 10, clock)
    tick(runtime)
    users = runtime.context.user_state[DIGEST_USERS.name]
    [sent] = users.get("acme/alice")["sent"].values()
    assert sent["ids"] == [str(comment(1)["notification_id"])]
    later(runtime, 70, clock)
    out = tick(runtime)
    assert out.of(VALIDATED) == [] and users.get("acme/alice") is None


def test_herald_templates_put_refuses_a_digest_that_could_not_work() -> None:
    assert template_problems(comments()) == []
    problems = template_problems(comments(window_s=0, max_items=0, key="projet"))
    assert [p.split("digest: ")[1] for p in problems] == [
        "window_s is 0; at least 1", "max_items is 0; at least 1",
        "key 'projet' is not one of the template's variables (project, author, comment)"]


async def test_a_tick_reads_every_held_partitions_state_first_and_waits_for_a_batch_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart no new record may come for a user whose window is open: the tick itself reads
    that partition's state. And it never runs while a batch's writes are in flight."""
    runtime = stage(DIGEST_STAGE, tmp_path, comments())
    for table in runtime.tables:  # folded to their end
        table.ready.set()
    loaded: list[set[int]] = []
    emitted: list[Outputs] = []

    async def load(partitions: set[int]) -> None:
        loaded.append(set(partitions))

    async def emit(out: Outputs, block_id: str) -> None:
        emitted.append(out)

    monkeypatch.setattr(runtime.context.user_state[DIGEST_USERS.name], "load", load)
    monkeypatch.setattr(runtime, "emit", emit)
    monkeypatch.setattr(runtime, "assignment", lambda: {TP(DIGEST.name, 1), TP(DIGEST.name, 3), TP(VALIDATED.name, 2)})
    async with runtime.tick_lock:  # a batch being handled
        tick = asyncio.create_task(runtime.run_tick())
        await asyncio.sleep(0.05)
        assert not loaded and not emitted
    await tick
    assert loaded == [{1, 3}] and len(emitted) == 1


async def test_a_cancelled_notification_is_left_out_of_its_digest_and_an_all_cancelled_one_is_not_sent(
        tmp_path: Path, clock: pytest.MonkeyPatch) -> None:
    runtime = stage(DIGEST_STAGE, tmp_path, comments(window_s=10))
    cancellations = runtime.context.cancellations
    assert cancellations is not None

    def cancel(notification: dict[str, Any]) -> None:
        cancellations.fold(cancellation_key(notification["tenant"], notification["notification_id"]),
                           {"notification_id": notification["notification_id"], "tenant": notification["tenant"]})

    cancel(comment(0))
    out = await gather(runtime, [comment(n) for n in range(3)] + [comment(0, "bob")])
    [refused] = [e for e in out.of(EVENTS) if e["status"] == "suppressed"]
    assert (refused["notification_id"], refused["error_code"]) == (comment(0)["notification_id"], "cancelled")
    cancel(comment(1))
    cancel(comment(0, "bob"))
    later(runtime, 10, clock)
    out = tick(runtime)
    [digest] = out.of(VALIDATED)  # alice's; bob's only notification was cancelled
    assert digest["digest_items"] == [comment(2)["variables"]]
    suppressed = {e["notification_id"] for e in out.of(EVENTS) if e["status"] == "suppressed"}
    assert suppressed == {comment(1)["notification_id"], comment(0, "bob")["notification_id"]}
    assert runtime.context.user_state[DIGEST_USERS.name].get("acme/bob")["open"] == {}
