"""DeadLetter records: what every stage (and the sink) writes to herald.dlq instead of dropping."""

from datetime import datetime, timezone
from typing import Any
from uuid import UUID


def dead_letter(
    *,
    stage: str,
    reason_code: str,
    detail: str,
    topic: str,
    partition: int = -1,
    offset: int = -1,
    key: bytes | None = None,
    value: bytes | None = None,
    headers: dict[str, bytes] | None = None,
    notification_id: UUID | None = None,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "reason_code": reason_code,
        "detail": detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "original_key": key,
        "original_value": value,
        "headers": headers or {},
        "notification_id": notification_id,
        "failed_at": datetime.now(timezone.utc),
    }
