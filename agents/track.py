"""track: every lifecycle event on herald.events → ClickHouse (sinks/event_sink.py)."""

from mode import ServiceT

from sinks.event_sink import EventSink
from streams.settings import get_settings


def services() -> list[ServiceT]:
    """Services the worker starts beside the Faust agents of this stage."""
    return [EventSink(get_settings())]
