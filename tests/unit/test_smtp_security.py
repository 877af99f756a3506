"""SMTP over STARTTLS and implicit TLS with AUTH: the local mailbox (tooling/mailbox.py) secured as the
settings say, and deliver's email adapter (agents/channels/email.py) with the same settings, on a
free loopback port; the certificates are the local ones of tooling/peers/keys.py."""

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr

from agents.channels.base import Result
from agents.channels.email import EmailAdapter
from streams.settings import Settings
from tests.unit import records
from tooling.mailbox import MailboxHandler, read_receipts, security
from tooling.peers import keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secured(tmp_path: Path, tls: str, **more: Any) -> Settings:
    return Settings(data_dir=tmp_path / "herald", smtp_port=free_port(), smtp_tls=tls, smtp_username="relay-user",
                    smtp_password=SecretStr("relay-secret"), smtp_pool_size=1, smtp_timeout_s=5.0,
                    email_tracking=False, **more)


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Any]:
    controllers = []

    def start(settings: Settings) -> Path:
        directory = tmp_path / f"mail-{settings.smtp_port}"
        controller = Controller(MailboxHandler(directory), hostname="127.0.0.1", port=settings.smtp_port,
                                **security(settings))
        controller.start()
        controllers.append(controller)
        return directory

    yield start
    for controller in controllers:
        controller.stop()


async def send(settings: Settings, **task: Any) -> Any:
    adapter = EmailAdapter(settings)
    await adapter.start()
    try:
        return await adapter.send(records.delivery_task(**task))
    finally:
        await adapter.stop()


@pytest.mark.parametrize("tls", ["starttls", "tls"])
async def test_delivers_over_tls_after_logging_in(tmp_path: Path, mailbox: Any, tls: str) -> None:
    settings = secured(tmp_path, tls)
    directory = mailbox(settings)
    outcome = await send(settings)
    assert outcome.result is Result.SENT, outcome
    [receipt] = read_receipts(directory)
    assert receipt.to == ["alice@example.com"]


async def test_a_wrong_password_is_refused_transient_and_nothing_is_stored(tmp_path: Path, mailbox: Any) -> None:
    settings = secured(tmp_path, "starttls")
    directory = mailbox(settings)
    outcome = await send(settings.model_copy(update={"smtp_password": SecretStr("wrong")}))
    assert (outcome.result, outcome.code) == (Result.TRANSIENT, "smtp_auth"), outcome
    assert list(read_receipts(directory)) == []


async def test_a_plaintext_client_gets_no_mail_through(tmp_path: Path, mailbox: Any) -> None:
    settings = secured(tmp_path, "starttls")
    directory = mailbox(settings)
    outcome = await send(settings.model_copy(update={"smtp_tls": "none", "smtp_username": None}))
    assert outcome.result is not Result.SENT
    assert "STARTTLS" in outcome.detail
    assert list(read_receipts(directory)) == []


async def test_a_server_certificate_from_another_ca_is_not_trusted(tmp_path: Path, mailbox: Any) -> None:
    settings = secured(tmp_path, "starttls")
    directory = mailbox(settings)
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(keys.tls_files()[keys.APNS_CA])
    outcome = await send(settings.model_copy(update={"smtp_ca_file": other_ca}))
    assert (outcome.result, outcome.code) == (Result.TRANSIENT, "smtp_connection")
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.detail
    assert list(read_receipts(directory)) == []


def test_the_password_is_never_in_the_settings_repr(tmp_path: Path) -> None:
    assert "relay-secret" not in repr(secured(tmp_path, "starttls"))
