"""tooling/mailbox.py's fault injection (the chaos tests' flaky provider), against a real aiosmtpd
server on a free loopback port with aiosmtplib as deliver's email adapter uses it."""

import asyncio
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from streams.settings import Settings
from tooling.mailbox import FAULTS, Faults, MailboxHandler, read_receipts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    controllers = []

    def start(faults: Faults, seed: int = 7) -> int:
        port = free_port()
        controller = Controller(MailboxHandler(tmp_path, faults, random.Random(seed)), hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


def message(n: int) -> bytes:
    return f"From: a@x\r\nTo: b@y\r\nSubject: {n}\r\nMessage-ID: <{n}@herald.test>\r\n\r\nbody {n}\r\n".encode()


async def send(port: int, n: int, timeout: float = 2.0) -> str:
    """'ok', or the SMTP code of a refusal, or 'timeout'."""
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=timeout) as client:
            await client.sendmail("a@x", ["b@y"], message(n))
        return "ok"
    except aiosmtplib.SMTPRecipientsRefused as exc:
        return str(exc.recipients[0].code)
    except aiosmtplib.SMTPResponseException as exc:
        return str(exc.code)
    except (aiosmtplib.SMTPTimeoutError, asyncio.TimeoutError):
        return "timeout"


def test_settings_default_to_no_faults_and_a_stall_longer_than_the_client_waits() -> None:
    faults = Faults.from_settings(Settings(smtp_timeout_s=10.0))
    assert not faults and faults.timeout_s == 15.0
    assert Faults.from_settings(Settings(mailbox_timeout_s=3.0)).timeout_s == 3.0
    with pytest.raises(ValueError):
        Faults(fail_rate=0.8, timeout_rate=0.3)


def test_draws_hit_the_rates_and_every_transactional_command() -> None:
    faults, rng = Faults(fail_rate=0.5, timeout_rate=0.1), random.Random(1)
    drawn = [faults.draw(rng) for _ in range(20_000)]
    kinds = [f.kind if f else None for f in drawn]
    assert abs(kinds.count("fail") / 20_000 - 0.5) < 0.02
    assert abs(kinds.count("timeout") / 20_000 - 0.1) < 0.01
    assert {f.command for f in drawn if f} == {"MAIL", "RCPT", "DATA"}


async def test_failures_are_4xx_and_nothing_failed_is_stored(serve, tmp_path: Path) -> None:
    port = serve(Faults(fail_rate=0.5))
    answers = [await send(port, n) for n in range(60)]
    assert set(answers) <= {"ok", "450", "451", "452"} and "ok" in answers and len(set(answers)) == 4
    receipts = list(read_receipts(tmp_path))
    assert len(receipts) == answers.count("ok") == len(list((tmp_path / "messages").glob("*.eml")))
    assert len((tmp_path / FAULTS).read_text().splitlines()) == 60 - answers.count("ok")


async def test_a_stall_outlasts_the_client_and_stores_nothing(serve, tmp_path: Path) -> None:
    port = serve(Faults(timeout_rate=1.0, timeout_s=1.0))
    assert await send(port, 1, timeout=0.3) == "timeout"
    assert list(read_receipts(tmp_path)) == []
    assert await send(port, 2, timeout=0.3) == "timeout"  # the server takes new connections meanwhile


async def test_without_faults_every_message_is_stored_once(serve, tmp_path: Path) -> None:
    port = serve(Faults())
    assert [await send(port, n) for n in (1, 2, 1)] == ["ok", "ok", "ok"]
    assert [r.duplicate for r in read_receipts(tmp_path)] == [False, False, True]
    assert not (tmp_path / FAULTS).exists()
