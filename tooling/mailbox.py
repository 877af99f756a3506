"""A local mail provider: an SMTP server (aiosmtpd) that keeps what it receives where a person can look.

`herald up` runs it on smtp_port. Each accepted message is saved once as `<dir>/messages/<id>.eml`,
and every submission, repeats included, is a line of `<dir>/received.jsonl`. Like a real provider
honouring an idempotency key, a repeat of a Message-ID it already holds is acknowledged and not stored
again; the line says `"duplicate": true`, so benchmarks and tests count repeats honestly.
"""

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from email.header import decode_header, make_header
from email.parser import BytesParser
from email.policy import compat32

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

RECEIPTS = "received.jsonl"
HEADERS = BytesParser(policy=compat32)


@dataclass(frozen=True)
class Receipt:
    message_id: str
    notification_id: str
    to: list[str]
    subject: str
    received_ms: float
    duplicate: bool


def read_receipts(directory: Path) -> Iterator[Receipt]:
    path = directory / RECEIPTS
    if not path.exists():
        return
    with path.open() as lines:
        for line in lines:
            if line.endswith("\n"):  # a line still being written is read next time
                yield Receipt(**json.loads(line))


class MailboxHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        (directory / "messages").mkdir(parents=True, exist_ok=True)
        self.seen = {receipt.message_id for receipt in read_receipts(directory)}
        self.receipts = (directory / RECEIPTS).open("a", buffering=1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
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


def serve(directory: Path, host: str, port: int) -> None:
    """Run until interrupted."""
    controller = Controller(MailboxHandler(directory), hostname=host, port=port)
    controller.start()
    print(f"mailbox: SMTP on {host}:{port}, messages in {directory}", flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()

