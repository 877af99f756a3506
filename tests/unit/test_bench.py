"""tooling/bench.py: which process is which stage, and the CPU each one used during the run; the channels
asked for, the following of receipts, and the figures per channel."""

import json
import sys
from pathlib import Path

import pytest

from agents.channels import CHANNELS
from streams.settings import Settings
from tooling.bench import ReceiptFile, Tally, contacts, cpu_by_role, parse_channels, process_role, reached, summary
from tooling.processes import stage_command


def test_a_stage_worker_is_its_stage() -> None:
    assert process_role(stage_command("validate", "warn")) == "validate"
    assert process_role(stage_command("some-new-stage", "info")) == "some-new-stage"


def test_the_gateway() -> None:
    assert process_role([sys.executable, "-m", "tooling.cli", "gateway"]) == "gateway"


def test_what_is_not_measured() -> None:
    python = [sys.executable, "-m", "tooling.cli"]
    assert process_role([*python, "worker", "--stage", "all"]) is None  # the supervisor only waits
    assert process_role([*python, "worker"]) is None
    assert process_role([*python, "mailbox"]) is None
    assert process_role([sys.executable, "-m", "pytest", "--stage", "ingest"]) is None
    assert process_role([""]) is None


def test_cpu_by_role_sums_processes_and_skips_those_that_exited() -> None:
    processes = {10: "ingest", 11: "deliver", 12: "deliver", 13: "gateway"}
    before = {10: 1.0, 11: 2.0, 12: 3.0, 13: 0.5}
    after = {10: 1.5, 11: 4.0, 12: 3.25}  # the gateway exited meanwhile
    assert cpu_by_role(processes, before, after) == {"ingest": 0.5, "deliver": 2.25, "gateway": 0.0}


def test_channels_are_comma_separated_or_repeated_each_once_in_order() -> None:
    assert parse_channels(["email"]) == ["email"]
    assert parse_channels(["email,sms", "push", " chat , in_app,", "sms"]) == ["email", "sms", "push", "chat", "in_app"]


@pytest.mark.parametrize("values", [["email,fax"], ["letter"], [""], [" , "]])
def test_an_unknown_or_missing_channel_is_refused(values: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_channels(values)


def receipt(nid: str, ms: float, duplicate: bool = False) -> str:
    return json.dumps({"notification_id": nid, "received_ms": ms, "duplicate": duplicate, "to": "x"}) + "\n"


def test_a_receipt_file_is_followed_from_its_end_counting_repeats(tmp_path: Path) -> None:
    path = tmp_path / "received.jsonl"
    path.write_text(receipt("a", 1.0))  # before the bench: not counted
    follower, tally = ReceiptFile(path), Tally({"a", "b", "c"})
    follower.skip_existing()
    with path.open("a") as out:
        out.write(receipt("a", 10.0) + receipt("other-run", 11.0) + receipt("b", 12.0) + receipt("a", 13.0, True))
        out.write(receipt("c", 14.0)[:-5])  # still being written
    follower.poll(tally)
    assert (tally.first_seen, tally.duplicates) == ({"a": 10.0, "b": 12.0}, 1)
    with path.open("a") as out:
        out.write(receipt("c", 14.0)[-5:] + receipt("b", 15.0))
    follower.poll(tally)
    assert (tally.first_seen, tally.duplicates) == ({"a": 10.0, "b": 12.0, "c": 14.0}, 2)


def test_a_missing_receipt_file_counts_nothing_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "received.jsonl"
    follower, tally = ReceiptFile(path), Tally({"a"})
    follower.skip_existing()
    follower.poll(tally)
    path.write_text(receipt("a", 5.0))
    follower.poll(tally)
    assert tally.first_seen == {"a": 5.0}


def test_the_summary_adds_up_the_channels_and_keeps_each() -> None:
    requested = {"a": 0.0, "b": 1000.0}
    email, sms = Tally(set(requested)), Tally(set(requested))
    for nid, ms in (("a", 1000.0), ("b", 2000.0), ("a", 2500.0)):
        email.add(nid, ms)
    sms.add("b", 4000.0)
    figures = summary({"email": email, "sms": sms}, requested, started_ms=0.0)
    assert figures["channels"] == {
        "email": {"delivered": 2, "lost": 0, "duplicates": 1, "throughput_per_s": 1.0,
                  "latency_ms": {"p50": 1000.0, "p95": 1000.0, "p99": 1000.0}},
        "sms": {"delivered": 1, "lost": 1, "duplicates": 0, "throughput_per_s": 0.2,
                "latency_ms": {"p50": 3000.0, "p95": 3000.0, "p99": 3000.0}},
    }
    assert {k: figures[k] for k in ("notifications", "delivered", "lost", "duplicates", "throughput_per_s")} == \
        {"notifications": 2, "delivered": 3, "lost": 1, "duplicates": 1, "throughput_per_s": 0.8}
    assert figures["latency_ms"]["p50"] == 1000.0
    assert reached({"email": email, "sms": sms}) == 2
    assert reached({"sms": sms}) == 1


def test_bench_users_have_contacts_every_channel_accepts() -> None:
    settings = Settings()
    for user in (0, 1, 999):  # an APNs device, an FCM one; web push asks the peer (integration)
        preferences = contacts(settings, "bench-t", user).model_dump()
        for channel in ("sms", "push", "chat"):
            [address] = CHANNELS[channel].addresses({"phone": None, "push_tokens": []}, preferences)
            assert CHANNELS[channel].normalize(address)
