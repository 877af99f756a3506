"""The one small interface every provider adapter has: send a delivery task, get back an outcome."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class Result(StrEnum):
    SENT = "sent"
    TRANSIENT = "transient"  # worth retrying: timeouts, refused connections, 4xx SMTP, 5xx/429 HTTP
    PERMANENT = "permanent"  # retrying cannot help: invalid address, 5xx SMTP, 4xx HTTP


@dataclass(frozen=True)
class Outcome:
    result: Result
    code: str | None = None
    detail: str | None = None
    retry_after_s: float | None = None


SENT = Outcome(Result.SENT)


class ChannelAdapter(Protocol):
    """A provider adapter; it is also a mode Service, started and stopped with the deliver worker."""

    channel: str
    provider: str

    async def send(self, task: dict[str, Any]) -> Outcome: ...
