"""track: every lifecycle event on herald.events, and every dead letter on herald.dlq → ClickHouse.

The work is the sink of sinks/event_sink.py, a service of this stage: a plain aiokafka consumer in
its own consumer group (herald-clickhouse-sink) that commits only after its insert (see the sink's
docstring for why).
"""

from typing import Any

from streams.settings import Settings
from streams.stage import StageSpec
from streams.topics import DLQ, EVENTS


def sink(settings: Settings) -> dict[str, Any]:
    from sinks.event_sink import EventSink  # late: only the track worker needs the ClickHouse client

    return {"sink": EventSink(settings, TRACK.group_id(settings))}


TRACK = StageSpec(
    name="track",
    doc=__doc__ or "",
    inputs=(EVENTS, DLQ),
    outputs=(DLQ,),
    services=sink,
    group="clickhouse-sink",
)
