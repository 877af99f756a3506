"""streams/ids.py: derived notification ids and the positions and keys they derive from."""

import uuid


from streams.ids import NOTIFICATION_NS, log_position, member_key, member_position, notification_id


def test_log_position_names_topic_partition_and_offset() -> None:
    assert log_position("herald.requests", 3, 1042) == "herald.requests/3/1042"


def test_member_position_appends_the_index() -> None:
    assert member_position("herald.requests/3/1042", 0) == "herald.requests/3/1042/0"
    assert member_position("herald.requests/3/1042", 12) == "herald.requests/3/1042/12"


def test_notification_id_is_deterministic_uuid5() -> None:
    first = notification_id("acme", None, "herald.requests/0/7")
    assert first == notification_id("acme", None, "herald.requests/0/7")
    assert first.version == 5
    assert first == uuid.uuid5(NOTIFICATION_NS, "pos/herald.requests/0/7")


def test_notification_id_without_key_differs_by_position() -> None:
    ids = {notification_id("acme", None, log_position("herald.requests", p, o)) for p in range(3) for o in range(3)}
    assert len(ids) == 9


def test_notification_id_with_key_ignores_position() -> None:
    assert notification_id("acme", "order-1", "herald.requests/0/7") == notification_id("acme", "order-1", "herald.requests/2/99")


def test_notification_id_with_key_depends_on_tenant_and_key() -> None:
    base = notification_id("acme", "order-1", "p")
    assert notification_id("globex", "order-1", "p") != base
    assert notification_id("acme", "order-2", "p") != base


def test_empty_idempotency_key_counts_as_none() -> None:
    assert notification_id("acme", "", "herald.requests/0/7") == notification_id("acme", None, "herald.requests/0/7")


def test_key_and_position_namespaces_do_not_collide() -> None:
    # A key that looks like a position must not give that position's id.
    assert notification_id("acme", "herald.requests/0/7", "x") != notification_id("acme", None, "herald.requests/0/7")


def test_member_key_prefers_the_member_own_key() -> None:
    assert member_key("batch-key", "own-key", 4) == "own-key"


def test_member_key_derives_from_the_batch_key_and_index() -> None:
    assert member_key("batch-key", None, 0) == "batch-key:0"
    assert member_key("batch-key", None, 4) == "batch-key:4"


def test_member_key_is_none_without_any_key() -> None:
    assert member_key(None, None, 4) is None
    assert member_key("", None, 4) is None


def test_different_tenant_and_key_pairs_get_different_ids() -> None:
    assert notification_id("a/b", "c", "p") != notification_id("a", "b/c", "p")
