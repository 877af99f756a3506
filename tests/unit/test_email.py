"""agents/channels/email.py: the message built from a delivery task, SMTP error classification,
and EmailAdapter.send against a real (in-process) aiosmtpd server."""

import asyncio
import email
import socket
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as SMTPServer

from agents.channels.base import Outcome, Result
from agents.channels.email import EmailAdapter, build_message, classify, message_id
from streams.settings import Settings
from tests.unit import records

# Without tracking: these tests check the parts as rendered (tests/unit/test_tracking.py covers tracking).
SETTINGS = Settings(email_from="Herald <noreply@herald.test>", email_domain="mail.herald.test", email_tracking=False)


# --- build_message ---------------------------------------------------------------------------------------


def received(task: dict[str, Any]) -> EmailMessage:
    """The message as the SMTP server will parse it."""
    return email.message_from_bytes(build_message(task, SETTINGS), policy=default_policy)  # type: ignore[return-value]


def test_message_headers() -> None:
    message = received(records.delivery_task())
    assert message["From"] == "Herald <noreply@herald.test>"
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Hello Alice"
    assert message["Message-ID"] == f"<{records.NOTIFICATION_ID}@mail.herald.test>"
    assert message["X-Herald-Notification-Id"] == str(records.NOTIFICATION_ID)


def test_message_id_is_the_idempotency_key() -> None:
    first = received(records.delivery_task(attempt=0))
    retry = received(records.delivery_task(attempt=3))
    other = received(records.delivery_task(notification_id=uuid.UUID(int=5)))
    assert first["Message-ID"] == retry["Message-ID"]
    assert first["Message-ID"] != other["Message-ID"]
    assert message_id(records.NOTIFICATION_ID, "x.test") == f"<{records.NOTIFICATION_ID}@x.test>"


def test_message_has_text_and_html_alternatives() -> None:
    message = received(records.delivery_task())
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Hi Alice"
    assert parts[1].get_content().strip() == "<p>Hi Alice</p>"


def test_message_without_html_is_plain_text() -> None:
    message = received(records.delivery_task(content=records.content(html=None)))
    assert message.get_content_type() == "text/plain"
    assert message.get_content().strip() == "Hi Alice"


def test_message_with_missing_subject_and_text() -> None:
    task = records.delivery_task(content=records.content(subject=None, text=None, html=None))
    message = received(task)
    assert message["Subject"] == ""
    assert message.get_content().strip() == ""


def test_message_keeps_unicode() -> None:
    task = records.delivery_task(content=records.content(subject="Olá ✓", text="Obrigado, João ✓", html=None))
    parsed = received(task)
    assert parsed["Subject"] == "Olá ✓"
    assert parsed.get_content().strip() == "Obrigado, João ✓"


# --- classify --------------------------------------------------------------------------------------------


def test_smtp_4xx_is_transient() -> None:
    outcome = classify(aiosmtplib.SMTPResponseException(450, "mailbox busy"))
    assert outcome.result is Result.TRANSIENT
    assert outcome.code == "smtp_450"
    assert "mailbox busy" in outcome.detail


def test_smtp_5xx_is_permanent() -> None:
    outcome = classify(aiosmtplib.SMTPResponseException(550, "no such user"))
    assert outcome.result is Result.PERMANENT
    assert outcome.code == "smtp_550"
    assert "no such user" in outcome.detail


def test_smtp_5_1_1_says_the_mailbox_is_dead() -> None:
    refused = aiosmtplib.SMTPRecipientRefused(550, "5.1.1 The email account does not exist", "bob@example.com")
    outcome = classify(aiosmtplib.SMTPRecipientsRefused([refused]))
    assert (outcome.result, outcome.code) == (Result.DEAD_ADDRESS, "smtp_550")


def test_refused_recipient_uses_the_recipient_code() -> None:
    refused = aiosmtplib.SMTPRecipientRefused(550, "no such user", "bob@example.com")
    outcome = classify(aiosmtplib.SMTPRecipientsRefused([refused]))
    assert outcome.result is Result.PERMANENT
    assert outcome.code == "smtp_550"


def test_refused_recipient_4xx_is_transient() -> None:
    refused = aiosmtplib.SMTPRecipientRefused(451, "try later", "bob@example.com")
    outcome = classify(aiosmtplib.SMTPRecipientsRefused([refused]))
    assert outcome == Outcome(Result.TRANSIENT, "smtp_451", str(refused))


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    aiosmtplib.SMTPConnectError("cannot connect"),
    aiosmtplib.SMTPServerDisconnected("gone"),
    aiosmtplib.SMTPConnectTimeoutError("connect timed out"),
    aiosmtplib.SMTPReadTimeoutError("read timed out"),
    TimeoutError(),
    asyncio.TimeoutError(),
    aiosmtplib.SMTPRecipientsRefused([]),
])
def test_connection_trouble_is_transient(exc: Exception) -> None:
    outcome = classify(exc)
    assert outcome.result is Result.TRANSIENT
    assert outcome.code == "smtp_connection"
    assert outcome.detail.startswith(type(exc).__name__)


# --- EmailAdapter.send against a real SMTP server --------------------------------------------------------


class Mailbox:
    """aiosmtpd handler: keeps every message; refuses some recipients."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("busy@"):
            return "450 4.2.1 mailbox busy"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def smtp_server() -> AsyncIterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTPServer(mailbox, hostname="smtp.test"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert port != 2525
    try:
        yield mailbox, port
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def adapter_for() -> AsyncIterator[Any]:
    started: list[EmailAdapter] = []

    async def start(port: int) -> EmailAdapter:
        adapter = EmailAdapter(Settings(smtp_port=port, smtp_pool_size=2, smtp_timeout_s=2.0, email_tracking=False,
                                        email_from="Herald <noreply@herald.test>", email_domain="mail.herald.test"))
        await adapter.start()
        started.append(adapter)
        return adapter

    yield start
    for adapter in started:
        await adapter.stop()


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=default_policy)  # type: ignore[return-value]


async def test_send_delivers_to_the_server(smtp_server: tuple[Mailbox, int], adapter_for: Any) -> None:
    mailbox, port = smtp_server
    adapter = await adapter_for(port)
    outcome = await adapter.send(records.delivery_task())
    assert outcome.result is Result.SENT
    [(mail_from, rcpt_tos, raw)] = mailbox.received
    assert mail_from == "noreply@herald.test"
    assert rcpt_tos == ["alice@example.com"]
    message = parse(raw)
    assert message["Message-ID"] == f"<{records.NOTIFICATION_ID}@mail.herald.test>"
    assert message["Subject"] == "Hello Alice"
    assert message.get_body(("html",)).get_content().strip() == "<p>Hi Alice</p>"


async def test_send_many_reuses_the_pool(smtp_server: tuple[Mailbox, int], adapter_for: Any) -> None:
    mailbox, port = smtp_server
    adapter = await adapter_for(port)
    tasks = [records.delivery_task(notification_id=uuid.UUID(int=i)) for i in range(1, 6)]
    outcomes = await asyncio.gather(*(adapter.send(t) for t in tasks))
    assert [o.result for o in outcomes] == [Result.SENT] * 5
    ids = sorted(parse(raw)["X-Herald-Notification-Id"] for _, _, raw in mailbox.received)
    assert ids == sorted(str(t["notification_id"]) for t in tasks)
    assert adapter.pool.qsize() == 2  # every client went back


async def test_unknown_mailbox_is_a_dead_address_and_the_next_send_works(
        smtp_server: tuple[Mailbox, int], adapter_for: Any) -> None:
    mailbox, port = smtp_server
    adapter = await adapter_for(port)
    refused = await adapter.send(records.delivery_task(address="nobody@example.com"))
    assert refused.result is Result.DEAD_ADDRESS  # 550 5.1.1
    assert refused.code == "smtp_550"
    assert (await adapter.send(records.delivery_task())).result is Result.SENT
    assert [rcpt for _, rcpt, _ in mailbox.received] == [["alice@example.com"]]


async def test_busy_recipient_is_transient(smtp_server: tuple[Mailbox, int], adapter_for: Any) -> None:
    mailbox, port = smtp_server
    adapter = await adapter_for(port)
    outcome = await adapter.send(records.delivery_task(address="busy@example.com"))
    assert outcome.result is Result.TRANSIENT
    assert outcome.code == "smtp_450"
    assert mailbox.received == []


async def test_send_without_a_server_is_transient(adapter_for: Any) -> None:
    adapter = await adapter_for(free_port())
    outcome = await adapter.send(records.delivery_task())
    assert outcome.result is Result.TRANSIENT
    assert outcome.code == "smtp_connection"
    assert adapter.pool.qsize() == 2


async def test_newline_in_subject_gives_an_outcome(smtp_server: tuple[Mailbox, int], adapter_for: Any) -> None:
    mailbox, port = smtp_server
    adapter = await adapter_for(port)
    task = records.delivery_task(content=records.content(subject="Hello Al\r\nBcc: evil@example.com"))
    outcome = await adapter.send(task)
    assert isinstance(outcome, Outcome)
    for _, rcpt_tos, raw in mailbox.received:  # if sent, then with no injected header
        assert rcpt_tos == ["alice@example.com"]
        assert parse(raw)["Bcc"] is None


def test_long_unicode_subject_and_multiline_bodies_round_trip() -> None:
    subject = "Olá ✓ " * 40
    text = "Obrigado, João ✓\n" * 100
    html = "<p>✓ & más</p>\n" * 100
    parsed = received(records.delivery_task(content=records.content(subject=subject, text=text, html=html)))
    assert parsed["Subject"] == " ".join(subject.split())
    plain, rich = parsed.iter_parts()
    assert plain.get_content() == text
    assert rich.get_content() == html
    assert all(len(line) <= 998 for line in build_message(records.delivery_task(), SETTINGS).split(b"\r\n"))


HOSTILE_ADDRESSES = [
    "alice@example.com, evil@evil.test",
    "alice@example.com,evil@evil.test",
    "alice@example.com\r\nBcc: evil@evil.test",
    "alice@example.com\nBcc: evil@evil.test",
    "alice@example.com\rRCPT TO:<evil@evil.test>",
    "Alice <evil@evil.test>",
    '"alice@example.com" <evil@evil.test>',
    "<evil@evil.test>",
    "alice@example.com;evil@evil.test",
    "alice@example.com evil@evil.test",
    "alice@example.com\x00evil@evil.test",
    "=?utf-8?q?evil?= <evil@evil.test>",
    "evil@evil.test (alice@example.com)",
    "alice@example.com>\r\nDATA",
    "",
    " ",
    "@",
    "a" * 300 + "@example.com",
]


@pytest.mark.parametrize("address", HOSTILE_ADDRESSES)
async def test_a_hostile_address_is_refused_and_nothing_is_sent(
        smtp_server: tuple[Mailbox, int], adapter_for: Any, address: str) -> None:
    mailbox, port = smtp_server
    adapter = await adapter_for(port)
    outcome = await adapter.send(records.delivery_task(address=address))
    assert outcome.result is Result.PERMANENT
    assert outcome.code == "invalid_address"
    assert mailbox.received == []


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: evil@evil.test", "Hi\nTo: evil@evil.test", "Hi\rX: y"])
async def test_a_hostile_subject_cannot_add_a_header_or_recipient(
        smtp_server: tuple[Mailbox, int], adapter_for: Any, subject: str) -> None:
    mailbox, port = smtp_server
    adapter = await adapter_for(port)
    outcome = await adapter.send(records.delivery_task(content=records.content(subject=subject)))
    assert outcome.result is Result.SENT
    [(_, rcpt_tos, raw)] = mailbox.received
    assert rcpt_tos == ["alice@example.com"]
    message = parse(raw)
    assert message["Bcc"] is None and message["X"] is None
    assert message.get_all("To") == ["alice@example.com"]


def test_a_tracked_message_has_the_pixel_and_redirected_links() -> None:
    task = records.delivery_task(content=records.content("email", html='<a href="https://example.com/">go</a>'))
    tracked = Settings(email_tracking=True, public_url="https://notify.example.com")
    html = parse(build_message(task, tracked)).get_body(("html",)).get_content()
    assert 'href="https://notify.example.com/t/c/' in html and 'src="https://notify.example.com/t/o/' in html
    assert "https://example.com/" not in html
