"""track: every lifecycle event on herald.events → ClickHouse, through the sink of sinks/event_sink.py.

The stage has no Faust agent of its own: the sink is a plain consumer that commits only after its
insert (see the sink's docstring for why); this module gives it a place in the worker.
"""

from agents.stage import Stage
from sinks.event_sink import EventSink
from streams.settings import get_settings

stage = Stage("track")
sink = stage.needs(EventSink(get_settings()))
