"""agents/route.py: `route`, delivery tasks for the channels that stay and suppressions for the rest."""

import json

import pytest

from agents.channels import CHANNELS
from agents.route import Suppression, delivery_task, opted_out, route
from schemas.serde import SCHEMA_DIR
from streams.codec import default_serde
from tests.unit import records

ALL = ("email", "sms", "push", "in_app", "chat")


def rendered(*channels: str, **overrides: object) -> dict:
    return records.notification(**({"rendered": [records.content(c) for c in channels],
                                    "channels": list(channels)} | overrides))


def full_recipient() -> dict:
    return records.recipient(email="req@example.com", phone="+15550000001", push_tokens=["tok-a", "tok-b"])


def full_preferences(**overrides: object) -> dict:
    return records.preferences(**({"email": "pref@example.com", "phone": "+15550000002", "push_tokens": ["tok-p"],
                                   "chat_webhook": "https://chat.example.com/hook"} | overrides))


def test_one_task_per_rendered_channel() -> None:
    tasks, suppressed = route(rendered("email", "sms"), full_preferences())
    assert suppressed == []
    assert [t["channel"] for t in tasks] == ["email", "sms"]
    assert [t["content"]["channel"] for t in tasks] == ["email", "sms"]


def test_task_carries_the_notification_fields() -> None:
    notification = rendered("email", priority="high", category="security", fallback_channel="sms",
                            metadata={"a": "b"})
    [task], _ = route(notification, None)
    for field in ("notification_id", "tenant", "recipient", "template_id", "template_version", "category",
                  "priority", "fallback_channel", "requested_at", "received_at", "metadata"):
        assert task[field] == notification[field], field
    assert task["address"] == "alice@example.com"
    assert task["content"] == notification["rendered"][0]
    assert task["attempt"] == 0
    assert task["due_at"] is None


def test_task_has_exactly_the_delivery_task_fields_and_encodes() -> None:
    serde = default_serde()
    schema_fields = {f["name"] for f in json.loads((SCHEMA_DIR / "DeliveryTask.avsc").read_text())["fields"]}
    tasks, _ = route(rendered(*ALL, recipient=full_recipient()), full_preferences())
    assert [t["channel"] for t in tasks] == ["email", "sms", "push", "push", "in_app", "chat"]  # push: one per device
    for task in tasks:
        assert set(task) == schema_fields
        decoded = serde.decode(serde.encode("DeliveryTask", task), "DeliveryTask")
        assert decoded == task


@pytest.mark.parametrize("category", ["transactional", "*"])
def test_opt_out_for_the_category_or_everything_suppresses(category: str) -> None:
    preferences = full_preferences(opt_outs=[{"category": category, "channel": "email"}])
    tasks, suppressed = route(rendered("email", "sms"), preferences)
    assert [t["channel"] for t in tasks] == ["sms"]
    assert len(suppressed) == 1
    assert suppressed[0].channel == "email"
    assert suppressed[0].reason_code == "opted_out"
    assert "transactional" in suppressed[0].detail


def test_opt_out_of_another_category_or_channel_does_not_suppress() -> None:
    preferences = full_preferences(opt_outs=[{"category": "marketing", "channel": "email"},
                                             {"category": "transactional", "channel": "push"}])
    tasks, suppressed = route(rendered("email"), preferences)
    assert [t["channel"] for t in tasks] == ["email"]
    assert suppressed == []


def test_no_address_suppresses() -> None:
    notification = rendered("email", "sms", "push", "chat", recipient=records.recipient())
    tasks, suppressed = route(notification, None)
    assert tasks == []
    assert suppressed == [Suppression(c, "no_address", f"no {CHANNELS[c].contact} for the user")
                          for c in ("email", "sms", "push", "chat")]


def test_opt_out_wins_over_no_address() -> None:
    preferences = records.preferences(opt_outs=[{"category": "*", "channel": "sms"}])
    _, suppressed = route(rendered("sms", recipient=records.recipient()), preferences)
    assert [s.reason_code for s in suppressed] == ["opted_out"]


def test_in_app_goes_to_the_user_id() -> None:
    [task], _ = route(rendered("in_app", recipient=records.recipient(user_id="u-9")), None)
    assert task["address"] == "u-9"


def test_nothing_rendered_gives_nothing() -> None:
    assert route(rendered(), full_preferences()) == ([], [])


def addresses(channel: str, recipient: dict, preferences: dict | None) -> list[str]:
    return CHANNELS[channel].addresses(recipient, preferences)


@pytest.mark.parametrize(("channel", "expected"), [
    ("email", ["req@example.com"]), ("sms", ["+15550000001"]), ("push", ["tok-a", "tok-b"]), ("in_app", ["user-1"]),
    ("chat", ["https://chat.example.com/hook"]),
])
def test_addresses_prefer_the_request(channel: str, expected: list[str]) -> None:
    assert addresses(channel, full_recipient(), full_preferences()) == expected


@pytest.mark.parametrize(("channel", "expected"), [
    ("email", ["pref@example.com"]), ("sms", ["+15550000002"]), ("push", ["tok-p"]), ("in_app", ["user-1"]),
])
def test_addresses_fall_back_to_preferences(channel: str, expected: list[str]) -> None:
    assert addresses(channel, records.recipient(), full_preferences()) == expected


@pytest.mark.parametrize("channel", ["email", "sms", "push", "chat"])
def test_no_addresses_without_contacts(channel: str) -> None:
    assert addresses(channel, records.recipient(), None) == []
    assert addresses(channel, records.recipient(), records.preferences()) == []


def test_a_channel_herald_does_not_have_is_suppressed() -> None:
    notification = rendered("email", recipient=records.recipient(email="a@example.com"))
    notification["rendered"][0]["channel"] = notification["channels"][0] = "fax"
    assert route(notification, None) == ([], [Suppression("fax", "channel_unavailable", "Herald has no fax channel")])


def test_opted_out_without_preferences_is_false() -> None:
    assert opted_out(None, "transactional", "email") is False
    assert opted_out(records.preferences(), "transactional", "email") is False


def test_delivery_task_uses_the_given_content_and_address() -> None:
    content = records.content("sms", subject=None, html=None, text="code 1234")
    task = delivery_task(rendered("sms"), content, "+15550000009")
    assert task["channel"] == "sms"
    assert task["address"] == "+15550000009"
    assert task["content"] is content


def test_a_dead_address_is_skipped_and_the_others_used() -> None:
    notification = rendered("push", recipient=records.recipient(push_tokens=["tok-a", "tok-b"]))
    tasks, suppressed = route(notification, None, {("push", "tok-a")})
    assert [t["address"] for t in tasks] == ["tok-b"] and suppressed == []


def test_every_address_dead_is_suppressed_with_the_reason() -> None:
    notification = rendered("email", recipient=records.recipient(email="gone@example.com"))
    tasks, [suppression] = route(notification, None, {("email", "gone@example.com")})
    assert tasks == [] and suppression.reason_code == "dead_address" and "gone@example.com" in suppression.detail


def test_the_fallback_part_rides_on_each_task_and_is_not_delivered_of_its_own() -> None:
    notification = rendered("sms", "email", recipient=records.recipient(phone="+15550000001", email="a@example.com"))
    notification["channels"], notification["fallback_channel"] = ["sms"], "email"
    [task], suppressed = route(notification, None)
    assert task["channel"] == "sms" and suppressed == []
    assert task["fallback"] == {"channel": "email", "address": "a@example.com",
                                "content": notification["rendered"][1]}
    serde = default_serde()
    assert serde.decode(serde.encode("DeliveryTask", task), "DeliveryTask") == task


def test_no_fallback_without_a_live_address_for_it() -> None:
    notification = rendered("sms", "email", recipient=records.recipient(phone="+15550000001", email="a@example.com"))
    notification["channels"], notification["fallback_channel"] = ["sms"], "email"
    [task], _ = route(notification, None, {("email", "a@example.com")})
    assert task["fallback"] is None
