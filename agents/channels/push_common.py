"""What a push is whichever provider carries it, and the answers every push provider's HTTP API shares.

The push channel (agents/channels/push.py) hands each token to its provider's sender
(apns.py, fcm.py, webpush.py); they all build their payload from one `PushMessage`.
"""

from dataclasses import dataclass
from typing import Any, Protocol

from agents.channels.base import Outcome, Result


@dataclass(frozen=True)
class PushMessage:
    title: str
    body: str
    data: dict[str, str]
    # The notification id as 32 hex digits: APNs' apns-id (as a UUID), FCM's collapse key, web push's Topic.
    notification_id: str
    priority: str  # low, normal or high

    @property
    def high(self) -> bool:
        return self.priority == "high"

    @classmethod
    def of(cls, task: dict[str, Any]) -> "PushMessage":
        content = task["content"]
        return cls(title=content["subject"] or "", body=content["text"] or "", data=dict(content["data"] or {}),
                   notification_id=task["notification_id"].hex, priority=task["priority"])


class PushSender(Protocol):
    """One push provider; `token` is the part of the push token after `<provider>:`, normalised."""

    provider: str

    async def send(self, token: str, message: PushMessage) -> Outcome: ...


def connection_outcome(provider: str, exc: BaseException) -> Outcome:
    """The provider could not be reached or did not answer in time: worth retrying."""
    return Outcome(Result.TRANSIENT, f"{provider}_connection", f"{type(exc).__name__}: {exc}")
