"""Memory per user of the state a worker holds (`herald state-size`), measured with tracemalloc.

- route's per-user state (frequency caps, streams/user_state.py): a worker holds only the users of
  its partitions, so its memory is this figure times its share of the users;
- digest's per-user state (open windows, agents/digest.py), held the same way;
- the preference table, folded whole by every route and gateway process, for comparison.
Scheduled notifications are not held in memory: they wait on herald.scheduled (agents/deliver.py).
"""

import json
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.caps import record_send, sends_key
from agents.digest import Windows, gather
from schemas.models import PreferencesUpdated
from streams.codec import default_serde
from streams.settings import Settings
from streams.tables import PreferenceTable
from streams.topics import DIGEST_USERS, ROUTE_USERS, TopicSpec
from streams.user_state import UserStateTable

HOURLY_AND_DAILY = [{"channel": "*", "limit": 3, "period_s": 3600}, {"channel": "*", "limit": 10, "period_s": 86400}]


def measured(fill: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes still allocated by what `fill` built (kept alive through its return value)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = fill()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, held


def cap_state(user: int, sends_per_channel: int, now: datetime) -> dict[str, Any]:
    """A user's route state: the recent sends on two channels of one category."""
    state: dict[str, Any] = {}
    for channel in ("email", "push"):
        sends: list[list[Any]] = []
        for i in range(sends_per_channel):
            at = now - timedelta(minutes=10 * i)
            sends = record_send(sends, HOURLY_AND_DAILY, str(uuid.UUID(int=user * 100 + i)), at, now)
        state[sends_key("marketing", channel)] = sends
    return state


def user_state_bytes(settings: Settings, changelog: TopicSpec, values: list[bytes]) -> tuple[int, int]:
    """(memory, changelog bytes) of a UserStateTable holding one value per user."""

    def fill() -> UserStateTable:
        table = UserStateTable(settings, changelog)
        for user, value in enumerate(values):
            table.apply(user % settings.topic_partitions, f"acme/user-{user}".encode(), value)
        return table

    memory, _ = measured(fill)
    return memory, sum(len(v) for v in values)


def route_state_bytes(settings: Settings, users: int, sends_per_channel: int = 3) -> tuple[int, int]:
    """(memory, changelog bytes) of route's cap state for `users` users."""
    now = datetime.now(UTC)
    return user_state_bytes(settings, ROUTE_USERS,
                            [json.dumps(cap_state(user, sends_per_channel, now)).encode() for user in range(users)])


def digest_window(user: int, items: int, now: datetime) -> dict[str, Any]:
    """A user's digest state: one open window of `items` comments (three short variables each)."""
    windows = Windows(None)
    spec = {"key": "document", "window_s": 600, "max_items": 100}
    for i in range(items):
        notification = {
            "notification_id": uuid.UUID(int=user * 1000 + i), "tenant": "acme", "template_id": "comments",
            "template_version": None, "recipient": {"user_id": f"user-{user}", "email": None, "phone": None,
                                                    "push_tokens": [], "locale": None, "time_zone": None},
            "channels": ["email"], "category": "activity", "priority": "normal", "fallback_channel": None,
            "metadata": {}, "variables": {"document": "the launch plan", "author": f"author {i}",
                                          "comment": f"comment number {i} on the plan"}}
        gather(windows, notification, spec, f"acme/user-{user}", now, 250_000, 600)
    value = windows.value()
    assert value is not None
    return value


def digest_state_bytes(settings: Settings, users: int, items: int = 10) -> tuple[int, int]:
    """(memory, changelog bytes) of digest's open windows for `users` users."""
    now = datetime.now(UTC)
    return user_state_bytes(settings, DIGEST_USERS,
                            [json.dumps(digest_window(user, items, now)).encode() for user in range(users)])


def preference_bytes(settings: Settings, users: int) -> int:
    serde = default_serde()
    now = datetime.now(UTC)
    values = [serde.encode("PreferencesUpdated", PreferencesUpdated(
        user_id=f"user-{user}", tenant="acme", email=f"user-{user}@example.com", phone=f"+1415555{user % 10000:04d}",
        push_tokens=[f"fcm:device-{user}"], time_zone="Europe/Paris", updated_at=now).to_avro()) for user in range(users)]

    def fill() -> PreferenceTable:
        table = PreferenceTable(settings, serde)
        for user, value in enumerate(values):
            table.apply(f"acme/user-{user}".encode(), value)
        return table

    memory, _ = measured(fill)
    return memory
