"""tooling/replay.py's pure parts: where a refused record goes back to, and its identity across replays."""

import uuid

from streams.dead_letters import dead_letter
from streams.topics import ACCEPTED, DLQ, REJECTED
from tooling.replay import send_back


def rejection(stage: str, original: bytes = b"framed notification") -> dict:
    return {"notification_id": uuid.UUID(int=7), "tenant": "acme", "stage": stage, "reason_code": "unknown_template",
            "detail": "no template", "original": original}


def test_a_rejection_goes_back_to_the_input_of_the_stage_that_made_it() -> None:
    back = send_back(REJECTED.name, rejection("validate"))
    assert (back.target, back.key, back.value) == (ACCEPTED, uuid.UUID(int=7).bytes, b"framed notification")


def test_a_dead_letter_goes_back_to_its_topic_and_one_from_nowhere_known_does_not() -> None:
    letter = dead_letter(stage="deliver", reason_code="retries_exhausted", detail="5 attempts",
                         topic="herald.deliver.sms", key=b"user-1", value=b"framed task")
    back = send_back(DLQ.name, letter)
    assert (back.target.name, back.key, back.value) == ("herald.deliver.sms", b"user-1", b"framed task")
    assert send_back(DLQ.name, dict(letter, topic="somebody.elses.topic")) is None
    assert send_back(DLQ.name, dict(letter, original_value=None)) is None


def test_the_same_record_refused_again_has_the_same_identity_and_another_does_not() -> None:
    first = send_back(REJECTED.name, rejection("validate"))
    again = send_back(REJECTED.name, rejection("validate"))
    other = send_back(REJECTED.name, rejection("validate", b"another notification"))
    assert first.mark == again.mark != other.mark
