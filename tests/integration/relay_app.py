"""A minimal Faust app for test_faust_relay: one agent reads Avro LifecycleEvents and writes them on.

Run as `python -m tests.integration.relay_app worker`; the topics come from the environment.
"""

import os
from typing import Any

from streams.app import create_app
from streams.codec import codec_name
from streams.settings import get_settings

SOURCE = os.environ["RELAY_SOURCE"]
TARGET = os.environ["RELAY_TARGET"]

app = create_app(get_settings(), os.environ["RELAY_APP_ID"])
values = codec_name(("LifecycleEvent",))
source = app.topic(SOURCE, key_type=bytes, key_serializer="raw", value_serializer=values)
target = app.topic(TARGET, key_type=bytes, key_serializer="raw", value_serializer=values)


@app.agent(source)
async def relay(stream: Any) -> None:
    async for event in stream.events():
        record = dict(event.value, status="delivered", stage="relay")
        await target.send(key=event.key, value=record)


if __name__ == "__main__":
    app.main()
