"""Email over SMTP (aiosmtplib), with a pool of open connections to the configured server, over
STARTTLS or implicit TLS and with AUTH when the settings say so (smtp_tls, smtp_username).

Message-ID is derived from the notification id: it is the provider-side idempotency key, so a
mailbox that already holds the message recognises a resend after a crash.
"""

import asyncio
import base64
from email.header import Header
from email.utils import parseaddr
from typing import Any

import aiosmtplib
from email_validator import validate_email
from mode import Service

from agents.channels.base import SENT, Channel, Outcome, Result, first_of
from agents.channels.tracking import track_html
from streams.settings import Settings
from tooling.peers.keys import client_tls_context


def email_address(raw: str) -> str:
    """The address to send to, normalised; raises ValueError (EmailNotValidError) for anything that
    is not one plain address: a display name, a second address after a comma, a line break."""
    return validate_email(raw, check_deliverability=False).normalized


def message_id(notification_id: Any, domain: str) -> str:
    return f"<{notification_id}@{domain}>"


def header_value(value: str) -> str:
    """A header value on one line: ASCII as it is, anything else as RFC 2047 encoded words.
    Line breaks are collapsed: a variable must never start a header of its own."""
    value = " ".join(value.split())
    if value.isascii() and len(value) <= 900:
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def text_part(content_type: str, text: str) -> bytes:
    """A text part's headers and body: UTF-8, base64 in 76-character lines."""
    body = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    return (f"Content-Type: {content_type}; charset=\"utf-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            .encode() + body)


def build_message(task: dict[str, Any], settings: Settings) -> bytes:
    """The RFC 5322 message: text, plus an HTML alternative when there is one.

    Written out directly rather than through the `email` package's generator: for this one fixed
    shape (two text parts, a handful of headers) the generator cost ~260 µs a message, a third of
    the deliver stage's CPU; this costs ~15 µs. tests/unit/test_email.py parses the result back with
    the `email` package to prove it is well-formed.
    """
    content = task["content"]
    notification_id = task["notification_id"]
    headers = [
        f"From: {header_value(settings.email_from)}",
        f"To: {header_value(task['address'])}",
        f"Subject: {header_value(content['subject'] or '')}",
        f"Message-ID: {message_id(notification_id, settings.email_domain)}",
        f"X-Herald-Notification-Id: {notification_id}",
        "MIME-Version: 1.0",
    ]
    text = text_part("text/plain", content["text"] or "")
    html = content["html"]
    if not html:
        return "\r\n".join(headers).encode() + b"\r\n" + text
    # The boundary never occurs in a base64 body (it holds '=' and '_' runs base64 cannot make).
    boundary = f"=_herald_{notification_id.hex}_="
    headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    delimiter = f"\r\n--{boundary}\r\n".encode()
    return ("\r\n".join(headers).encode() + b"\r\n" + delimiter + text + delimiter
            + text_part("text/html", track_html(html, task, settings) if settings.email_tracking else html)
            + f"\r\n--{boundary}--\r\n".encode())


# RFC 3463 enhanced codes that say the mailbox itself does not exist: a bounce that removes the address.
DEAD_MAILBOX = ("5.1.1", "5.1.10")


def classify(exc: Exception) -> Outcome:
    """SMTP 4xx and connection trouble are transient; SMTP 5xx is permanent, and a dead address when
    the enhanced code says the mailbox does not exist. A refused login is transient: it is no fault
    of the message, and the retries give the credentials a chance to be fixed."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return Outcome(Result.TRANSIENT, "smtp_auth", str(exc))
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", "") or ""
    if isinstance(code, int) and code >= 500 and message.split(" ", 1)[0] in DEAD_MAILBOX:
        return Outcome(Result.DEAD_ADDRESS, f"smtp_{code}", str(exc))
    if isinstance(code, int) and code >= 500:
        return Outcome(Result.PERMANENT, f"smtp_{code}", str(exc))
    if isinstance(code, int) and code >= 400:
        return Outcome(Result.TRANSIENT, f"smtp_{code}", str(exc))
    return Outcome(Result.TRANSIENT, "smtp_connection", f"{type(exc).__name__}: {exc}")


def smtp_client(settings: Settings) -> aiosmtplib.SMTP:
    """A client of the configured server: STARTTLS or implicit TLS as `smtp_tls` says (never an
    opportunistic upgrade it could be talked out of), then AUTH when a username is set; both happen
    on connect."""
    tls = settings.smtp_tls != "none"
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return aiosmtplib.SMTP(
        hostname=settings.smtp_host, port=settings.smtp_port, timeout=settings.smtp_timeout_s,
        use_tls=settings.smtp_tls == "tls", start_tls=settings.smtp_tls == "starttls",
        tls_context=client_tls_context(settings.smtp_ca_file, settings.smtp_host, settings) if tls else None,
        username=settings.smtp_username, password=password if settings.smtp_username else None,
    )


class EmailAdapter(Service):
    channel = "email"
    provider = "smtp"

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.pool: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self.sender = parseaddr(settings.email_from)[1]

    async def on_start(self) -> None:
        for _ in range(self.settings.smtp_pool_size):
            self.pool.put_nowait(smtp_client(self.settings))

    async def on_stop(self) -> None:
        while not self.pool.empty():
            client = self.pool.get_nowait()
            if client.is_connected:
                client.close()

    async def send(self, task: dict[str, Any]) -> Outcome:
        # Checked here, where it is used, whichever stage or preference the address came from.
        try:
            address = email_address(task["address"])
        except ValueError as exc:
            return Outcome(Result.PERMANENT, "invalid_address", f"{task['address']!r}: {exc}")
        try:
            message = build_message(dict(task, address=address), self.settings)
        except (ValueError, TypeError) as exc:
            return Outcome(Result.PERMANENT, "invalid_message", f"{type(exc).__name__}: {exc}")
        client = await self.pool.get()
        try:
            if not client.is_connected:
                await client.connect()
            # The envelope recipient is the task's address, passed explicitly: never read from headers.
            await client.sendmail(self.sender, [address], message)
            return SENT
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            if client.is_connected:
                client.close()  # a failed session is not reused; the next send reconnects
            return classify(exc)
        finally:
            self.pool.put_nowait(client)


CHANNEL = Channel(
    name="email",
    contact="email address",
    addresses=lambda recipient, preferences: first_of(recipient["email"], (preferences or {}).get("email")),
    normalize=email_address,
    invalid_reason="invalid_email",
    adapter=EmailAdapter,
)
