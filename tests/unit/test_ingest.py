"""agents/ingest.py: `expand`, one notification per recipient with a derived id."""

from datetime import UTC, datetime

import pytest

from agents.ingest import expand
from schemas.serde import default_serde
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
