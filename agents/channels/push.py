"""Mobile and web push: one channel, three providers, chosen by the token's prefix.

A push token names its provider, then the provider's own address for the device:

    apns:<device token>      iOS: the device token as hex (64 digits today; up to 200)
    fcm:<registration token> Android: the FCM registration token (letters, digits, - _ :)
    webpush:<subscription>   a browser: base64url of the PushSubscription's JSON
                             {"endpoint": "https://…", "keys": {"p256dh": …, "auth": …}}

A user's push tokens come from the request (`recipient.push_tokens`), else from their preferences;
route makes one delivery task per token. Validate and the adapter check each token with
`push_token`; the provider modules (apns.py, fcm.py, webpush.py) hold each kind's rule and its sender.
"""

from typing import Any

from mode import Service

from agents.channels import apns, fcm, webpush
from agents.channels.base import Channel, Outcome, Result
from agents.channels.guard import GuardSet
from agents.channels.push_common import PushMessage, PushSender
from streams.settings import Settings, get_settings

MAX_TOKEN = 8192
# Each provider's check of its part of a token: normalised, or ValueError saying why.
KINDS = {"apns": apns.device_token, "fcm": fcm.registration_token, "webpush": webpush.subscription_token}


def push_token(raw: str, settings: Settings) -> str:
    """The token normalised (`<provider>:<normalised address>`), or ValueError saying why it is not one."""
    if not isinstance(raw, str) or len(raw) > MAX_TOKEN:
        raise ValueError(f"a push token is a string of at most {MAX_TOKEN} characters")
    kind, colon, value = raw.partition(":")
    if not colon or kind not in KINDS:
        raise ValueError("a push token starts with its provider: apns:, fcm: or webpush:")
    return f"{kind}:{KINDS[kind](value, settings)}"


def normalize(raw: str) -> str:
    return push_token(raw, get_settings())


def push_tokens(recipient: dict[str, Any], preferences: dict[str, Any] | None) -> list[str]:
    """The request's tokens, else the preferences': every device gets its own task."""
    return list(recipient.get("push_tokens") or (preferences or {}).get("push_tokens") or ())


class PushAdapter(Service):
    """Hands each task to the sender of its token's provider; the Outcome names that provider."""

    channel = "push"
    provider = "push"

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.senders: dict[str, PushSender] = {
            "apns": apns.ApnsSender(settings), "fcm": fcm.FcmSender(settings), "webpush": webpush.WebPushSender(settings),
        }

        self.guards = GuardSet(settings.push)

    def on_init_dependencies(self) -> list[Any]:
        return list(self.senders.values())

    async def send(self, task: dict[str, Any]) -> Outcome:
        # Checked here, where it is used, whichever stage or preference the token came from.
        try:
            kind, _, value = push_token(task["address"], self.settings).partition(":")
        except ValueError as exc:
            return Outcome(Result.PERMANENT, "invalid_address", f"{str(task['address'])[:200]!r}: {exc}")
        sender = self.senders[kind]
        return await self.guards.get(kind, kind).send(lambda: sender.send(value, PushMessage.of(task)))


CHANNEL = Channel(
    name="push",
    contact="push token",
    addresses=push_tokens,
    normalize=normalize,
    invalid_reason="invalid_push_token",
    adapter=PushAdapter,
)
