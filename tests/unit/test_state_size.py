"""`herald state-size` (tooling/state_size.py): the tables it fills hold what it says they hold."""

from pathlib import Path

from streams.settings import Settings
from tooling.state_size import cap_state, digest_state_bytes, digest_window, preference_bytes, route_state_bytes
from datetime import UTC, datetime


def test_a_users_cap_state_holds_its_recent_sends_per_channel() -> None:
    state = cap_state(7, 3, datetime.now(UTC))
    assert sorted(state) == ["marketing|email", "marketing|push"] and all(len(s) == 3 for s in state.values())


def test_a_users_digest_state_holds_one_open_window_of_its_items() -> None:
    [window] = digest_window(7, 10, datetime.now(UTC))["open"].values()
    assert len(window["items"]) == 10


def test_the_figures_grow_with_the_users(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    small, large = route_state_bytes(settings, 200), route_state_bytes(settings, 2000)
    assert 5 * small[0] < large[0] and 5 * small[1] < large[1]
    assert 5 * preference_bytes(settings, 200) < preference_bytes(settings, 2000)
    small, large = digest_state_bytes(settings, 200), digest_state_bytes(settings, 2000)
    assert 5 * small[0] < large[0] and 5 * small[1] < large[1]
