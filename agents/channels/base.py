"""What a channel is to Herald: a plug-in that owns its rules, and the adapters that talk to its providers.

A channel module (agents/channels/<name>.py) declares one `Channel`: where its addresses come from
(the request, then the user's preferences), how one is checked and normalised (validate asks it; the
adapter asks again at the point of use), and the adapter that sends a delivery task to the provider.
agents/channels/__init__.py lists them; validate, route and deliver read that list and nothing else.
"""

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from streams.settings import Settings


class Result(StrEnum):
    SENT = "sent"
    TRANSIENT = "transient"  # worth retrying: timeouts, refused connections, 4xx SMTP, 5xx/429 HTTP
    PERMANENT = "permanent"  # retrying cannot help: invalid message, 5xx SMTP, most 4xx HTTP
    DEAD_ADDRESS = "dead_address"  # permanent, and the address will never work again (APNs 410, FCM UNREGISTERED…)


@dataclass(frozen=True)
class Outcome:
    result: Result
    code: str | None = None
    detail: str | None = None
    retry_after_s: float | None = None
    # The provider that answered, when a channel has several (primary and secondary, APNs and FCM).
    provider: str | None = None


SENT = Outcome(Result.SENT)


class ChannelAdapter(Protocol):
    """A provider adapter; it is also a mode Service, started and stopped with the deliver worker."""

    channel: str
    provider: str

    async def send(self, task: dict[str, Any]) -> Outcome: ...


# Where a channel's addresses come from: the recipient of the request and the user's preferences (or None).
AddressFinder = Callable[[dict[str, Any], dict[str, Any] | None], list[str]]


@dataclass(frozen=True)
class Channel:
    name: str
    # What an address is, in messages: "email address", "phone number", "push token"…
    contact: str
    # The addresses to deliver to: one task each (push: one per device). Empty: suppressed `no_address`.
    addresses: AddressFinder
    # The address normalised, or ValueError saying why it is not one.
    normalize: Callable[[str], str]
    # The rejection reason when validate finds the address invalid (invalid_email, invalid_phone…).
    invalid_reason: str
    # The provider adapter deliver runs for this channel.
    adapter: Callable[[Settings], ChannelAdapter]
    # Whether its provider reports the delivery afterwards (herald.receipts): then a notification with
    # a fallback channel falls back when no `delivered` report arrives in time (`fallback_after_s`).
    reports_delivery: bool = False


def first_of(*values: Any) -> list[str]:
    """The first non-empty value as a one-address list: the request's contact wins over preferences."""
    for value in values:
        if value:
            return [value]
    return []
