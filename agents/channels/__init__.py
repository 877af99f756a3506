"""The channels Herald delivers on, one module each; validate, route and deliver read `CHANNELS`.

To add a channel: a module here that declares a `base.Channel` (addresses, validation, adapter),
listed below, a symbol in the `Channel` enum of the schemas, and a local peer in tooling/peers/.
"""

from agents.channels import chat, email, in_app, push, sms
from agents.channels.base import Channel

CHANNELS: dict[str, Channel] = {channel.name: channel for channel in (email.CHANNEL, chat.CHANNEL, in_app.CHANNEL, sms.CHANNEL, push.CHANNEL)}
