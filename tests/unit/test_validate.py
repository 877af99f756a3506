"""agents/validate.py: `check`, the channels of a valid notification or its first problem."""

import pytest

from agents.validate import MAX_TOTAL_BYTES, MAX_VARIABLE_BYTES, MAX_VARIABLES, Problem, check
from tests.unit import records


def accepted(**overrides: object) -> dict:
    """A notification as ingest writes it: not rendered, template version as requested."""
    return records.notification(**({"channels": [], "rendered": [], "template_version": None} | overrides))


def template(**overrides: object) -> dict:
    parts = [records.part("email"), records.part("sms", html=None, subject=None)]
    return records.template(**({"parts": parts} | overrides))


def test_valid_notification_gets_every_channel_of_the_template() -> None:
    assert check(accepted(), template(), None) == ["email", "sms"]


def test_requested_channels_are_kept_in_request_order_when_offered() -> None:
    assert check(accepted(channels=["sms", "email"]), template(), None) == ["sms", "email"]
    assert check(accepted(channels=["sms", "push"]), template(), None) == ["sms"]


@pytest.mark.parametrize("user_id", ["", "   ", "\t"])
def test_missing_recipient(user_id: str) -> None:
    problem = check(accepted(recipient=records.recipient(user_id=user_id)), template(), None)
    assert isinstance(problem, Problem)
    assert problem.reason_code == "missing_recipient"


def test_missing_recipient_is_found_before_the_template() -> None:
    problem = check(accepted(recipient=records.recipient(user_id="")), None, None)
    assert isinstance(problem, Problem) and problem.reason_code == "missing_recipient"


def test_unknown_template_names_it() -> None:
    problem = check(accepted(), None, None)
    assert problem == Problem("unknown_template", "no template 'welcome'")


def test_unknown_template_names_the_version_asked_for() -> None:
    problem = check(accepted(template_version=4), None, None)
    assert isinstance(problem, Problem)
    assert problem.reason_code == "unknown_template"
    assert "'welcome' version 4" in problem.detail


def test_missing_variable_names_each_missing_variable() -> None:
    problem = check(accepted(variables={"name": "Alice"}), template(variables=["name", "order_id", "total"]), None)
    assert isinstance(problem, Problem)
    assert problem.reason_code == "missing_variable"
    assert problem.detail == "template 'welcome' needs: order_id, total"


def test_extra_variables_are_fine() -> None:
    assert check(accepted(variables={"name": "A", "unused": "B"}), template(), None) == ["email", "sms"]


def test_invalid_email_in_the_request() -> None:
    problem = check(accepted(recipient=records.recipient(email="not-an-email")), template(), None)
    assert isinstance(problem, Problem)
    assert problem.reason_code == "invalid_email"
    assert "not-an-email" in problem.detail


def test_invalid_email_from_preferences_when_the_request_has_none() -> None:
    problem = check(accepted(recipient=records.recipient(email=None)), template(),
                    records.preferences(email="alice@@example.com"))
    assert isinstance(problem, Problem)
    assert problem.reason_code == "invalid_email"
    assert "alice@@example.com" in problem.detail


def test_request_email_wins_over_preferences() -> None:
    result = check(accepted(recipient=records.recipient(email="alice@example.com")), template(),
                   records.preferences(email="broken"))
    assert result == ["email", "sms"]


def test_email_is_not_checked_when_email_is_not_a_channel() -> None:
    result = check(accepted(channels=["sms"], recipient=records.recipient(email="broken")), template(), None)
    assert result == ["sms"]


def test_no_email_at_all_is_left_to_route() -> None:
    assert check(accepted(recipient=records.recipient(email=None)), template(), None) == ["email", "sms"]


def test_no_channel_when_none_of_the_requested_is_offered() -> None:
    problem = check(accepted(channels=["push", "chat"]), template(), None)
    assert isinstance(problem, Problem)
    assert problem.reason_code == "no_channel"
    assert "push" in problem.detail


def test_no_channel_when_the_template_has_no_parts() -> None:
    problem = check(accepted(), template(parts=[]), None)
    assert isinstance(problem, Problem) and problem.reason_code == "no_channel"


def test_too_many_variables() -> None:
    variables = {"name": "A"} | {f"v{i}": "x" for i in range(MAX_VARIABLES)}
    problem = check(accepted(variables=variables), template(), None)
    assert isinstance(problem, Problem) and problem.reason_code == "too_large"


def test_variables_at_the_limit_are_fine() -> None:
    variables = {"name": "A"} | {f"v{i}": "x" for i in range(MAX_VARIABLES - 1)}
    assert check(accepted(variables=variables), template(), None) == ["email", "sms"]


def test_one_variable_too_large_is_named() -> None:
    problem = check(accepted(variables={"name": "A", "body": "x" * (MAX_VARIABLE_BYTES + 1)}), template(), None)
    assert isinstance(problem, Problem)
    assert problem.reason_code == "too_large"
    assert "'body'" in problem.detail


def test_variable_size_counts_utf8_bytes_not_characters() -> None:
    value = "é" * (MAX_VARIABLE_BYTES // 2 + 1)  # fewer characters than the limit, more bytes
    assert len(value) < MAX_VARIABLE_BYTES
    problem = check(accepted(variables={"name": value}), template(), None)
    assert isinstance(problem, Problem) and problem.reason_code == "too_large"


def test_variables_too_large_in_total() -> None:
    count = MAX_TOTAL_BYTES // MAX_VARIABLE_BYTES + 1
    variables = {"name": "A"} | {f"v{i}": "x" * MAX_VARIABLE_BYTES for i in range(count)}
    problem = check(accepted(variables=variables), template(), None)
    assert isinstance(problem, Problem)
    assert problem.reason_code == "too_large"
    assert "total" in problem.detail


def test_a_fallback_channel_needs_a_part_in_the_template() -> None:
    problem = check(accepted(channels=["email"], fallback_channel="push"), template(), None)  # email and sms parts
    assert isinstance(problem, Problem) and problem.reason_code == "invalid_fallback" and "push" in problem.detail


def test_a_fallback_channel_the_template_offers_is_fine_and_not_a_channel_of_its_own() -> None:
    assert check(accepted(channels=["email"], fallback_channel="sms"), template(), None) == ["email"]
