"""A local mail provider: an SMTP server (aiosmtpd) that keeps what it receives where a person can look.

`herald up` runs it on smtp_port. Each accepted message is saved once as `<dir>/messages/<id>.eml`,
and every submission, repeats included, is a line of `<dir>/received.jsonl`. Like a real provider
honouring an idempotency key, a repeat of a Message-ID it already holds is acknowledged and not stored
again; the line says `"duplicate": true`, so benchmarks and tests count repeats honestly.

For the chaos tests it can also misbehave like a struggling provider (settings `mailbox_fail_rate`,
`mailbox_timeout_rate`, `mailbox_timeout_s`): a share of the SMTP transactions gets a 4xx on one of
MAIL, RCPT or DATA, another share stalls there longer than the client waits. Neither stores the message.
Every fault injected is a line of `<dir>/faults.jsonl`.

Like a real relay it can insist on security, mirroring the client's settings (`smtp_tls`,
`smtp_username`): STARTTLS required before MAIL (or implicit TLS), with the local certificate of
tooling/peers/keys.py, and AUTH with the configured username and password.
"""

import asyncio
import hmac
import json
import random
import ssl
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from email.header import decode_header, make_header
from email.parser import BytesParser
from email.policy import compat32

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from streams.settings import Settings, get_settings
from tooling.peers.keys import local_tls

RECEIPTS = "received.jsonl"
FAULTS = "faults.jsonl"
# The reply of a failing command (RFC 3463 enhanced codes; all transient, so a client retries).
FAILURE_REPLIES = {
    "MAIL": "451 4.3.0 Temporary local problem, try again later",
    "RCPT": "450 4.2.1 Mailbox busy, try again later",
    "DATA": "452 4.3.1 Insufficient system storage, try again later",
}
HEADERS = BytesParser(policy=compat32)


@dataclass(frozen=True)
class Receipt:
    message_id: str
    notification_id: str
    to: list[str]
    subject: str
    received_ms: float
    duplicate: bool


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of a receipts file so far (the local peers' too: tooling/peers/server.py)."""
    if not path.exists():
        return
    with path.open() as lines:
        for line in lines:
            if line.endswith("\n"):  # a line still being written is read next time
                yield json.loads(line)


def read_receipts(directory: Path) -> Iterator[Receipt]:
    return (Receipt(**receipt) for receipt in read_lines(directory / RECEIPTS))


@dataclass(frozen=True)
class Fault:
    kind: str  # "fail" (a 4xx reply) or "timeout" (a stall, then a 4xx nobody waits for)
    command: str  # MAIL, RCPT or DATA


@dataclass(frozen=True)
class Faults:
    """How often the mailbox misbehaves, drawn once per SMTP transaction (see the module docstring)."""

    fail_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if not (0 <= self.fail_rate and 0 <= self.timeout_rate and self.fail_rate + self.timeout_rate <= 1):
            raise ValueError(f"mailbox fault rates must be >= 0 and add up to at most 1: {self}")
        if self.timeout_s <= 0:
            raise ValueError(f"mailbox_timeout_s must be positive: {self.timeout_s}")

    @classmethod
    def from_settings(cls, settings: Settings) -> "Faults":
        stall = settings.mailbox_timeout_s if settings.mailbox_timeout_s is not None else settings.smtp_timeout_s + 5
        return cls(settings.mailbox_fail_rate, settings.mailbox_timeout_rate, stall)

    def __bool__(self) -> bool:
        return self.fail_rate + self.timeout_rate > 0

    def draw(self, rng: random.Random) -> Fault | None:
        """This transaction's fault, if any; the command it hits is drawn too."""
        if not self:
            return None
        roll = rng.random()
        kind = "fail" if roll < self.fail_rate else "timeout" if roll < self.fail_rate + self.timeout_rate else None
        return Fault(kind, rng.choice(tuple(FAILURE_REPLIES))) if kind else None


class MailboxHandler:
    def __init__(self, directory: Path, faults: Faults = Faults(), rng: random.Random | None = None) -> None:
        self.directory = directory
        (directory / "messages").mkdir(parents=True, exist_ok=True)
        self.seen = {receipt.message_id for receipt in read_receipts(directory)}
        self.receipts = (directory / RECEIPTS).open("a", buffering=1)
        self.faults = faults
        self.rng = rng or random.Random()
        # The fault drawn for each open transaction, by its envelope: aiosmtpd makes a new Envelope for
        # every transaction (after DATA and on RSET), and MAIL begins each.
        self.pending: weakref.WeakKeyDictionary[Envelope, Fault] = weakref.WeakKeyDictionary()
        self.fault_log = (directory / FAULTS).open("a", buffering=1) if faults else None

    async def inject(self, envelope: Envelope, command: str) -> str | None:
        """The reply of an injected fault on this command, after the stall of a timeout; None: no fault."""
        fault = self.pending.get(envelope)
        if fault is None or fault.command != command:
            return None
        del self.pending[envelope]
        assert self.fault_log is not None
        self.fault_log.write(json.dumps({"kind": fault.kind, "command": command, "at_ms": time.time() * 1000}) + "\n")
        if fault.kind == "timeout":
            await asyncio.sleep(self.faults.timeout_s)  # the client gives up and hangs up first
        return FAILURE_REPLIES[command]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if fault := self.faults.draw(self.rng):
            self.pending[envelope] = fault
        if reply := await self.inject(envelope, "MAIL"):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if reply := await self.inject(envelope, "RCPT"):
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if reply := await self.inject(envelope, "DATA"):
            return reply
        content = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        # Headers only, compat32: the default policy's header objects cost the provider most of its CPU.
        message = HEADERS.parsebytes(content, headersonly=True)
        message_id = str(message.get("Message-ID", "")).strip().strip("<>")
        duplicate = bool(message_id) and message_id in self.seen
        if not duplicate:
            self.seen.add(message_id)
            name = message_id.replace("/", "_") or f"no-id-{time.time_ns()}"
            (self.directory / "messages" / f"{name}.eml").write_bytes(content)
        subject = str(make_header(decode_header(message.get("Subject", ""))))
        receipt = Receipt(message_id, str(message.get("X-Herald-Notification-Id", "")), list(envelope.rcpt_tos),
                          subject, time.time() * 1000, duplicate)
        self.receipts.write(json.dumps(receipt.__dict__) + "\n")
        return "250 OK already delivered" if duplicate else "250 OK queued"


class Login:
    """aiosmtpd's authenticator: the one username and password of the settings (PLAIN or LOGIN)."""

    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username.encode(), password.encode()

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 data: LoginPassword) -> AuthResult:
        good = (hmac.compare_digest(data.login, self.username)
                and hmac.compare_digest(data.password, self.password))
        return AuthResult(success=good, handled=False)  # handled=False: aiosmtpd answers 535 itself


def security(settings: Settings) -> dict[str, Any]:
    """Controller arguments mirroring the client's settings: the TLS mode of `smtp_tls` with the local
    certificate (STARTTLS required before any mail), and AUTH required when `smtp_username` is set."""
    kwargs: dict[str, Any] = {}
    if settings.smtp_tls != "none":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(local_tls(settings).server)
        if settings.smtp_tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        else:
            kwargs.update(ssl_context=context)
    if settings.smtp_username:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
        # Implicit TLS is TLS from the first byte, but aiosmtpd only counts STARTTLS as TLS for AUTH.
        kwargs.update(authenticator=Login(settings.smtp_username, password), auth_required=True,
                      auth_require_tls=settings.smtp_tls == "starttls")
    return kwargs


def serve(directory: Path, host: str, port: int, faults: Faults | None = None) -> None:
    """Run until interrupted; faults and TLS/AUTH from the settings unless given."""
    settings = get_settings()
    faults = Faults.from_settings(settings) if faults is None else faults
    secured = security(settings)
    controller = Controller(MailboxHandler(directory, faults), hostname=host, port=port, **secured)
    controller.start()
    print(f"mailbox: SMTP on {host}:{port} (TLS: {settings.smtp_tls}, AUTH: {'required' if settings.smtp_username else 'off'}), "
          f"messages in {directory}", flush=True)
    if faults:
        print(f"mailbox: injecting faults: {faults.fail_rate:.0%} of transactions fail with 4xx, "
              f"{faults.timeout_rate:.0%} stall {faults.timeout_s:g}s", flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()

