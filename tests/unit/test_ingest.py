"""agents/ingest.py: `expand`, one notification per recipient with a derived id."""

from datetime import UTC, datetime

import pytest

from agents.ingest import expand
from streams.codec import default_serde
from streams.codec import Envelope
from streams.ids import notification_id
from tests.unit import records

NOW = datetime(2024, 5, 6, 7, 8, 10, 5000, tzinfo=UTC)
POSITION = "herald.requests/1/42"


def single(**overrides: object) -> Envelope:
    return Envelope("NotificationRequest", records.request(**overrides))


def batch(**overrides: object) -> Envelope:
    return Envelope("NotificationBatch", records.batch(**overrides))


# --- NotificationRequest ---------------------------------------------------------------------------------


def test_request_gives_one_notification_with_the_request_fields() -> None:
    request = records.request()
    [notification] = expand(Envelope("NotificationRequest", request), POSITION, NOW)
    for field in ("tenant", "template_id", "template_version", "channels", "category", "priority", "send_at",
                  "fallback_channel", "requested_at", "metadata", "recipient", "variables", "idempotency_key"):
        assert notification[field] == request[field], field
    assert notification["batch_id"] is None
    assert notification["received_at"] == NOW
    assert notification["rendered"] == []


def test_request_notification_id_from_position_when_no_key() -> None:
    [notification] = expand(single(), POSITION, NOW)
    assert notification["notification_id"] == notification_id("acme", None, POSITION)


def test_request_id_is_deterministic_and_differs_by_position() -> None:
    [first] = expand(single(), POSITION, NOW)
    [again] = expand(single(), POSITION, datetime(2030, 1, 1, tzinfo=UTC))
    [elsewhere] = expand(single(), "herald.requests/1/43", NOW)
    assert first["notification_id"] == again["notification_id"]
    assert first["notification_id"] != elsewhere["notification_id"]


def test_request_with_idempotency_key_has_id_independent_of_position() -> None:
    [first] = expand(single(idempotency_key="order-9"), POSITION, NOW)
    [elsewhere] = expand(single(idempotency_key="order-9"), "herald.requests/3/7", NOW)
    assert first["notification_id"] == elsewhere["notification_id"] == notification_id("acme", "order-9", "ignored")
    assert first["idempotency_key"] == "order-9"


def test_request_variables_are_a_copy() -> None:
    request = records.request()
    [notification] = expand(Envelope("NotificationRequest", request), POSITION, NOW)
    notification["variables"]["name"] = "changed"
    assert request["variables"]["name"] == "Alice"


def test_request_notification_encodes_as_notification() -> None:
    [notification] = expand(single(), POSITION, NOW)
    serde = default_serde()
    decoded = serde.decode(serde.encode("Notification", notification), "Notification")
    assert decoded["notification_id"] == notification["notification_id"]
    assert decoded["recipient"] == notification["recipient"]


# --- NotificationBatch -----------------------------------------------------------------------------------


def test_batch_gives_one_notification_per_recipient_in_order() -> None:
    envelope = batch()
    notifications = expand(envelope, POSITION, NOW)
    assert [n["recipient"]["user_id"] for n in notifications] == ["user-1", "user-2", "user-3"]
    assert [n["recipient"] for n in notifications] == [m["recipient"] for m in envelope.record["recipients"]]
    for n in notifications:
        assert n["batch_id"] == "batch-7"
        assert n["template_version"] == 2
        assert n["channels"] == ["email"]
        assert n["category"] == "marketing"
        assert n["priority"] == "low"
        assert n["fallback_channel"] == "sms"
        assert n["received_at"] == NOW


def test_batch_variables_merge_and_the_recipient_wins() -> None:
    notifications = expand(batch(), POSITION, NOW)
    assert notifications[0]["variables"] == {"name": "Alice", "product": "Herald"}
    assert notifications[1]["variables"] == {"name": "everyone", "product": "Herald"}
    assert notifications[2]["variables"] == {"name": "Carol", "product": "Herald", "extra": "x"}


def test_batch_member_ids_are_distinct_and_deterministic() -> None:
    first = [n["notification_id"] for n in expand(batch(), POSITION, NOW)]
    again = [n["notification_id"] for n in expand(batch(), POSITION, NOW)]
    elsewhere = [n["notification_id"] for n in expand(batch(), "herald.requests/0/42", NOW)]
    assert first == again
    assert len(set(first)) == 3
    assert not set(first) & set(elsewhere)
    assert first == [notification_id("acme", None, f"{POSITION}/{i}") for i in range(3)]


def test_batch_key_gives_member_keys_with_index() -> None:
    notifications = expand(batch(idempotency_key="campaign-5"), POSITION, NOW)
    assert [n["idempotency_key"] for n in notifications] == ["campaign-5:0", "campaign-5:1", "campaign-5:2"]
    moved = expand(batch(idempotency_key="campaign-5"), "herald.requests/2/900", NOW)
    assert [n["notification_id"] for n in notifications] == [n["notification_id"] for n in moved]
    assert notifications[1]["notification_id"] == notification_id("acme", "campaign-5:1", "anywhere")


def test_member_own_key_wins_over_the_batch_key() -> None:
    members = records.batch()["recipients"]
    members[1]["idempotency_key"] = "own"
    notifications = expand(batch(idempotency_key="campaign-5", recipients=members), POSITION, NOW)
    assert [n["idempotency_key"] for n in notifications] == ["campaign-5:0", "own", "campaign-5:2"]
    assert notifications[1]["notification_id"] == notification_id("acme", "own", "anywhere")


def test_batch_without_recipients_gives_nothing() -> None:
    assert expand(batch(recipients=[]), POSITION, NOW) == []


def test_batch_does_not_share_variables_between_members() -> None:
    envelope = batch()
    notifications = expand(envelope, POSITION, NOW)
    notifications[1]["variables"]["name"] = "changed"
    assert envelope.record["variables"]["name"] == "everyone"
    assert notifications[0]["variables"]["name"] == "Alice"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_batch_notifications_encode_as_notification(index: int) -> None:
    notification = expand(batch(idempotency_key="k"), POSITION, NOW)[index]
    serde = default_serde()
    decoded = serde.decode(serde.encode("Notification", notification), "Notification")
    assert decoded["idempotency_key"] == f"k:{index}"
    assert decoded["batch_id"] == "batch-7"


# --- batch members that share an idempotency key, through the runtime as it runs ingest ------------------


def batch_request(offset: int, batch_key: str | None, *member_keys: str | None) -> "Incoming":
    from streams.stage import Incoming
    from streams.topics import REQUESTS

    value = records.batch(idempotency_key=batch_key,
                          recipients=[records.batch_member(f"user-{i}", idempotency_key=key)
                                      for i, key in enumerate(member_keys)])
    return Incoming(key=b"k", value=value, schema="NotificationBatch", topic=REQUESTS.name, partition=0,
                    offset=offset, raw=default_serde().encode("NotificationBatch", value))


def ingest_runtime(tmp_path):
    from agents.ingest import INGEST
    from streams.runtime import StageRuntime
    from streams.settings import Settings

    return StageRuntime(INGEST, Settings(data_dir=tmp_path))


async def test_members_with_the_same_key_are_rejected_after_the_first(tmp_path) -> None:
    from streams.ids import member_position
    from streams.topics import ACCEPTED, DLQ, EVENTS, REJECTED

    stage = ingest_runtime(tmp_path)
    request = batch_request(10, "camp", None, "camp:0", "dup", "dup", None)  # camp:0 twice, dup twice, camp:4
    out = await stage.handle([request])
    accepted = out.of(ACCEPTED)
    assert [(n["recipient"]["user_id"], n["idempotency_key"]) for n in accepted] == \
        [("user-0", "camp:0"), ("user-2", "dup"), ("user-4", "camp:4")]
    rejections = out.of(REJECTED)
    assert [r["reason_code"] for r in rejections] == ["duplicate_member_key"] * 2
    originals = [default_serde().decode(r["original"], "Notification") for r in rejections]
    assert [n["recipient"]["user_id"] for n in originals] == ["user-1", "user-3"]
    assert "recipient 1" in rejections[0]["detail"] and "'camp:0'" in rejections[0]["detail"]
    assert "recipient 0" in rejections[0]["detail"]
    # Rejected under the id of their own position, never under the id of the member that was accepted.
    position = request.position
    assert [r["notification_id"] for r in rejections] == \
        [notification_id("acme", None, member_position(position, i)) for i in (1, 3)]
    assert not {r["notification_id"] for r in rejections} & {n["notification_id"] for n in accepted}
    events = out.of(EVENTS)
    assert [(e["status"], e["error_code"]) for e in events if e["status"] == "rejected"] == \
        [("rejected", "duplicate_member_key")] * 2
    assert sum(e["status"] == "accepted" for e in events) == 3
    assert out.of(DLQ) == []


async def test_a_batch_with_duplicates_read_again_gives_the_same_rejections(tmp_path) -> None:
    from streams.topics import ACCEPTED, REJECTED

    stage = ingest_runtime(tmp_path)
    first = await stage.handle([batch_request(10, None, "dup", "dup")])
    again = await stage.handle([batch_request(10, None, "dup", "dup")])  # the same position: a crash's re-read
    for out in (first, again):
        assert [n["recipient"]["user_id"] for n in out.of(ACCEPTED)] == ["user-0"]
    assert [r["notification_id"] for r in first.of(REJECTED)] == [r["notification_id"] for r in again.of(REJECTED)]
    # The same batch from another position is a repeat: every keyed member is dropped, none rejected.
    repeat = await stage.handle([batch_request(10, None, "dup", "dup"), batch_request(11, None, "dup", "dup")])
    assert len(repeat.of(ACCEPTED)) == 1 and len(repeat.of(REJECTED)) == 1


@pytest.mark.parametrize("keys", [("camp", None, "camp:0"), ("camp", "camp:1", None), (None, "a", "b", "a", "a"),
                                  ("camp", None, "camp:9", "", None), (None, None, None)])
async def test_the_gateway_refuses_exactly_the_members_ingest_rejects(keys: tuple, tmp_path) -> None:
    from gateway.server import batch_model, duplicate_member_keys
    from streams.topics import REJECTED

    request = batch_request(10, *keys)
    out = await ingest_runtime(tmp_path).handle([request])
    rejected = {default_serde().decode(r["original"], "Notification")["recipient"]["user_id"]
                for r in out.of(REJECTED)}
    batch = batch_model(100).model_validate(request.value)
    refused = {f"user-{p['field'].split('.')[1]}" for p in duplicate_member_keys(batch)}
    assert refused == rejected
