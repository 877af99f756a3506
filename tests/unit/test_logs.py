"""JSON logs (streams/logs.py): one object per line, with the stage and, on a line about one
notification, its id; and the metrics a chunk's outputs feed (streams/stage.py Outputs.tally)."""

import io
import json
import logging

from streams.codec import default_serde
from streams.logs import NOTIFICATION_ID, use_json_logs
from streams.stage import Outputs
from tests.unit import records


def test_a_json_line_carries_the_stage_and_the_notification_being_worked_on() -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    try:
        use_json_logs("deliver")
        NOTIFICATION_ID.set("0b9c3bd4-0000-4000-8000-000000000001")
        logging.getLogger("agents.deliver").warning("provider said %s", "no")
        NOTIFICATION_ID.set(None)
        logging.getLogger("agents.deliver").warning("batch done")
    finally:
        root.handlers = saved
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "provider said no" and first["level"] == "WARNING" and first["logger"] == "agents.deliver"
    assert first["stage"] == "deliver" and first["notification_id"] == "0b9c3bd4-0000-4000-8000-000000000001"
    assert second["notification_id"] is None and "time" in second


def test_outputs_tally_events_and_dead_letters_by_reason() -> None:
    out = Outputs("validate", default_serde(), 1_000_000)
    notification = records.notification()
    out.reject(notification, "unknown_template", "no template")
    out.event(notification, "suppressed", channel="email", error_code="opted_out", detail="")
    out.dead_letter(None, "undecodable", "bad bytes", topic="herald.requests", key=b"k", value=b"\x00")
    assert out.tally == {("rejected", "unknown_template"): 1, ("suppressed", "opted_out"): 1,
                         ("dead_letter", "undecodable"): 1}
    assert [status for status, _ in out.since_request] == ["rejected", "suppressed"]
