"""sinks/queries.py: when a notification's lifecycle events say it is done (what `herald demo` waits for)."""

from typing import Any

from sinks.queries import settled, statuses


def test_sent_on_every_channel_is_settled() -> None:
    assert settled({"": {"accepted", "rendered"}, "email": {"routed", "sent"}})
    assert settled({"": {"accepted"}, "email": {"routed", "sent"}, "sms": {"suppressed"}})


def test_rejected_before_any_channel_is_settled() -> None:
    assert settled({"": {"accepted", "rejected"}})


def test_gathered_into_a_digest_is_settled() -> None:
    """Its digest goes on as a notification of its own."""
    assert settled({"": {"accepted", "digested"}})


def test_given_up_is_settled() -> None:
    assert settled({"": {"accepted"}, "email": {"routed", "retried", "failed", "dead_lettered"}})


def test_on_its_way_is_not_settled() -> None:
    assert not settled({})
    assert not settled({"": {"accepted", "rendered"}})
    assert not settled({"": {"accepted"}, "email": {"routed"}})
    assert not settled({"": {"accepted"}, "email": {"routed", "retried"}})
    assert not settled({"": {"accepted"}, "email": {"routed", "sent"}, "push": {"routed"}})


class FakeClient:
    def __init__(self, rows: list[tuple[str, str, list[str]]]) -> None:
        self.rows = rows
        self.params: dict[str, Any] = {}

    def execute(self, query: str, params: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
        self.params = params
        return self.rows


def test_statuses_by_notification_and_channel() -> None:
    client = FakeClient([("n1", "", ["accepted", "rendered"]), ("n1", "email", ["routed", "sent"]),
                         ("n2", "", ["accepted"])])
    found = statuses(client, ["n1", "n2", "n3"])  # type: ignore[arg-type]
    assert found == {"n1": {"": {"accepted", "rendered"}, "email": {"routed", "sent"}}, "n2": {"": {"accepted"}}}
    assert client.params == {"ids": ("n1", "n2", "n3")}
