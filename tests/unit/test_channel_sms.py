"""agents/channels/sms.py and guard.py: phone numbers, segments, the Twilio adapter against the local
Twilio peer (tooling/peers/twilio.py, in process, through the real HTTP client), status callbacks, and
the guard's token bucket, breaker and failover on a fake clock."""

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from mode import Service
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from agents.channels import CHANNELS
from agents.channels.base import Outcome, Result
from agents.channels.guard import GuardedAdapter, GuardSet
from agents.channels.sms import (DeliveryReport, Segments, SmsAdapter, callback_url, delivery_report, phone_number,
                                 segments, sms_adapter, verify_status_callback)
from agents.channels.http import retry_after_s
from streams.settings import ProviderGuardSettings, Settings, SmsSettings, TwilioSettings
from tests.unit import records
from tooling.peers import twilio
from tooling.peers.server import Fault, Peer, read_receipts

SID = "AC" + "1" * 32
TOKEN = "primary-token"
TO = "+14155552671"


# --- phone numbers -------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "e164"), [
    ("+14155552671", "+14155552671"),
    ("+1 (415) 555-2671", "+14155552671"),
    ("+1.415.555.2671", "+14155552671"),
    ("+33 6 12 34 56 78", "+33612345678"),
    ("+49 151 12345678", "+4915112345678"),
    ("+15005550006", "+15005550006"),
])
def test_valid_numbers_are_normalised_to_e164(raw: str, e164: str) -> None:
    assert phone_number(raw) == e164


@pytest.mark.parametrize(("raw", "reason"), [
    ("4155552671", "country code"),  # no default region: the number must say its country
    ("", "country code"),
    ("+1415555", "too short"),
    ("+1415555267123456", "too long"),
    ("+999123456789", "numbers after plus-sign"),  # no such country code
    ("+15550000001", "numbering plan"),  # 555 is no area code
    ("+1 415 555 2671 ext. 12", "country code"),
])
def test_invalid_numbers_say_why(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        phone_number(raw)


@pytest.mark.parametrize("raw", [
    "+14155552671\r\nBcc: x", "+14155552671\n", "+14155552671,+14155552672", "+14155552671;x",
    "tel:+14155552671", "++14155552671", "+1415555267１", " +14155552671", "+14155552671\x00",
])
def test_hostile_numbers_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="not a phone number"):
        phone_number(raw)


def test_channel_declaration() -> None:
    channel = CHANNELS["sms"]
    assert (channel.contact, channel.invalid_reason) == ("phone number", "invalid_phone")
    assert channel.addresses(records.recipient(phone=TO), records.preferences(phone="+33612345678")) == [TO]
    assert channel.addresses(records.recipient(), records.preferences(phone="+33612345678")) == ["+33612345678"]


# --- segments --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("", Segments(0, "GSM-7")),
    ("a" * 160, Segments(1, "GSM-7")),
    ("a" * 161, Segments(2, "GSM-7")),
    ("a" * 306, Segments(2, "GSM-7")),
    ("a" * 307, Segments(3, "GSM-7")),
    ("€" * 80, Segments(1, "GSM-7")),  # extension characters count double
    ("€" * 81, Segments(2, "GSM-7")),
    ("a" * 152 + "€" + "a" * 152, Segments(3, "GSM-7")),  # 306 septets, but the escape pair is not split
    ("Ça coûte 5 £ à Zoë", Segments(1, "UCS-2")),  # û is not in the GSM alphabet
    ("ж" * 70, Segments(1, "UCS-2")),
    ("ж" * 71, Segments(2, "UCS-2")),
    ("ж" * 134, Segments(2, "UCS-2")),
    ("ж" * 135, Segments(3, "UCS-2")),
    ("😀" * 35, Segments(1, "UCS-2")),  # a surrogate pair is two UCS-2 units
    ("ж" * 66 + "😀" + "ж" * 66, Segments(3, "UCS-2")),  # and is not split
])
def test_segments(text: str, expected: Segments) -> None:
    assert segments(text) == expected


def test_segments_read_as_text() -> None:
    assert str(Segments(1, "GSM-7")) == "1 segment (GSM-7)"
    assert str(Segments(3, "UCS-2")) == "3 segments (UCS-2)"


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("", None), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # an HTTP date in the past: now
])
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert retry_after_s(value) == seconds


def test_callback_url_names_the_notification() -> None:
    assert callback_url("https://h.example/cb", "n-1", "acme") == "https://h.example/cb?notification_id=n-1&tenant=acme"
    assert (callback_url("https://h.example/cb?k=1", "n-1", "a&b")
            == "https://h.example/cb?k=1&notification_id=n-1&tenant=a%26b")


# --- the adapter against the Twilio peer -------------------------------------------------------------

def account(base_url: str, **overrides: Any) -> TwilioSettings:
    return TwilioSettings(**({"base_url": base_url, "account_sid": SID, "auth_token": TOKEN,
                              "from_number": "+15005550006", "timeout_s": 2.0} | overrides))


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[tuple[Peer, str]]:
    settings = Settings(data_dir=tmp_path, sms=SmsSettings(twilio=account("http://unused")))
    peer = Peer("twilio", tmp_path / "peers" / "twilio")
    app = web.Application()
    app.add_routes(twilio.routes(peer, settings))
    async with TestServer(app, host="127.0.0.1") as server:
        yield peer, str(server.make_url("")).rstrip("/")


async def started(adapter: Service) -> Service:
    await adapter.start()
    return adapter


@pytest.fixture
async def adapter(peer: tuple[Peer, str]) -> AsyncIterator[SmsAdapter]:
    sms = SmsAdapter(account(peer[1]))
    await sms.start()
    yield sms
    await sms.stop()


def sms_task(address: str = TO, text: str = "Your code is 1234", **overrides: Any) -> dict[str, Any]:
    return records.delivery_task(channel="sms", address=address, notification_id=uuid.uuid4(),
                                 content=records.content("sms", subject=None, html=None, text=text), **overrides)


def receipts(peer: Peer) -> list[dict[str, Any]]:
    return list(read_receipts(peer.directory))


async def test_sent_message_reaches_the_peer_exactly(adapter: SmsAdapter, peer: tuple[Peer, str]) -> None:
    task = sms_task(address="+1 (415) 555-2671", text="Привет, Zoë!\nCode: 1234 {ok}")
    outcome = await adapter.send(task)
    assert outcome.result is Result.SENT
    assert outcome.detail is not None and outcome.detail.startswith("sid SM")
    assert outcome.detail.endswith("; 1 segment (UCS-2)")
    [receipt] = receipts(peer[0])
    assert receipt["body"] == "Привет, Zoë!\nCode: 1234 {ok}"
    assert (receipt["to"], receipt["from"], receipt["account_sid"]) == (TO, "+15005550006", SID)
    assert receipt["idempotency_token"] == str(task["notification_id"])
    assert f"sid {receipt['sid']};" in outcome.detail


@pytest.mark.parametrize(("address", "dead", "code"), [
    ("+15005550001", [], "twilio_21211"),  # Twilio's magic number for an invalid 'To'
    ("+15005550009", [], "twilio_21614"),  # not a mobile number
    (TO, [TO], "twilio_21610"),  # the recipient replied STOP
])
async def test_dead_numbers(adapter: SmsAdapter, peer: tuple[Peer, str], address: str, dead: list[str],
                            code: str) -> None:
    peer[0].faults = Fault(dead=set(dead))
    outcome = await adapter.send(sms_task(address=address))
    assert (outcome.result, outcome.code) == (Result.DEAD_ADDRESS, code)
    assert receipts(peer[0]) == []


async def test_server_error_is_transient(adapter: SmsAdapter, peer: tuple[Peer, str]) -> None:
    peer[0].faults = Fault(status=503, count=1)
    outcome = await adapter.send(sms_task())
    assert (outcome.result, outcome.code, outcome.retry_after_s) == (Result.TRANSIENT, "http_503", None)
    assert "20503" in (outcome.detail or "")
    assert receipts(peer[0]) == []
    assert (await adapter.send(sms_task())).result is Result.SENT


async def test_too_many_requests_carries_retry_after(adapter: SmsAdapter, peer: tuple[Peer, str]) -> None:
    peer[0].faults = Fault(status=429, retry_after_s=7)
    outcome = await adapter.send(sms_task())
    assert (outcome.result, outcome.code, outcome.retry_after_s) == (Result.TRANSIENT, "http_429", 7.0)


async def test_a_resend_is_stored_once(adapter: SmsAdapter, peer: tuple[Peer, str]) -> None:
    task = sms_task()
    first, second = await adapter.send(task), await adapter.send(task)
    assert first == second and first.result is Result.SENT  # the same message sid both times
    assert [r["duplicate"] for r in receipts(peer[0])] == [False, True]


async def test_wrong_credentials_are_permanent(peer: tuple[Peer, str]) -> None:
    sms = await started(SmsAdapter(account(peer[1], auth_token="wrong")))
    try:
        outcome = await sms.send(sms_task())
    finally:
        await sms.stop()
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "twilio_20003")


async def test_a_body_twilio_refuses_is_permanent(adapter: SmsAdapter) -> None:
    outcome = await adapter.send(sms_task(text="a" * 1601))
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "twilio_21617")


async def test_the_number_is_checked_again_before_sending(adapter: SmsAdapter, peer: tuple[Peer, str]) -> None:
    outcome = await adapter.send(sms_task(address="+14155552671\r\nX"))
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "invalid_address")
    assert receipts(peer[0]) == []


async def test_no_server_is_transient() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    sms = await started(SmsAdapter(account(f"http://127.0.0.1:{port}")))
    try:
        outcome = await sms.send(sms_task())
    finally:
        await sms.stop()
    assert (outcome.result, outcome.code) == (Result.TRANSIENT, "http_connection")


@pytest.mark.filterwarnings("ignore:.*BasicAuth.*:DeprecationWarning", "ignore:.*auth.*:DeprecationWarning")
async def test_the_twilio_library_works_against_the_peer(peer: tuple[Peer, str]) -> None:
    """The peer speaks Twilio's protocol: the official client creates a message and reads its errors."""
    http = AsyncTwilioHttpClient()
    client = Client(SID, TOKEN, http_client=http)
    client.api.base_url = peer[1]
    try:
        message = await client.messages.create_async(to=TO, from_="+15005550006", body="hello")
        with pytest.raises(TwilioRestException) as refused:
            await client.messages.create_async(to="+15005550001", from_="+15005550006", body="hello")
    finally:
        await http.close()
    assert message.sid.startswith("SM") and len(message.sid) == 34
    assert (message.status, message.num_segments, message.to, message.body) == ("queued", "1", TO, "hello")
    assert message.date_created is not None  # RFC 2822, parsed by the library
    assert (refused.value.status, refused.value.code) == (400, 21211)


# --- status callbacks ----------------------------------------------------------------------------------

async def test_status_callbacks_are_signed_and_map_to_a_status(peer: tuple[Peer, str]) -> None:
    received: list[tuple[str, dict[str, str], str | None]] = []
    done = asyncio.Event()

    async def callback(request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        received.append((str(request.url), form, request.headers.get("X-Twilio-Signature")))
        if len(received) == 2:
            done.set()
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.post("/v1/callbacks/twilio", callback)])
    async with TestServer(app, host="127.0.0.1") as receiver:
        sms = await started(SmsAdapter(account(peer[1], status_callback=str(receiver.make_url("/v1/callbacks/twilio")))))
        try:
            task = sms_task()
            assert (await sms.send(task)).result is Result.SENT
            await asyncio.wait_for(done.wait(), 5)
        finally:
            await sms.stop()
    reports = []
    for url, form, signature in received:
        assert parse_qs(urlsplit(url).query) == {"notification_id": [str(task["notification_id"])], "tenant": ["acme"]}
        assert verify_status_callback(url, form, signature, TOKEN)
        assert not verify_status_callback(url, form, signature, "another-token")
        assert not verify_status_callback(url, {**form, "MessageStatus": "delivered", "To": "+33612345678"},
                                          signature, TOKEN)
        assert not verify_status_callback(url, form, None, TOKEN)
        reports.append(delivery_report(form))
    assert reports == [None, DeliveryReport("delivered")]


def test_a_forged_signature_is_refused() -> None:
    url, form = "https://herald.example.com/v1/callbacks/twilio?notification_id=1", {"MessageStatus": "delivered"}
    forged = RequestValidator("guessed").compute_signature(url, form)
    assert verify_status_callback(url, form, RequestValidator(TOKEN).compute_signature(url, form), TOKEN)
    assert not verify_status_callback(url, form, forged, TOKEN)


@pytest.mark.parametrize(("form", "report"), [
    ({"MessageStatus": "delivered"}, DeliveryReport("delivered")),
    ({"MessageStatus": "undelivered", "ErrorCode": "30003"}, DeliveryReport("failed", "twilio_30003")),
    ({"MessageStatus": "failed", "ErrorCode": "30007"}, DeliveryReport("failed", "twilio_30007")),
    ({"MessageStatus": "failed"}, DeliveryReport("failed", "twilio_failed")),
    ({"SmsStatus": "delivered"}, DeliveryReport("delivered")),
    ({"MessageStatus": "queued"}, None),
    ({"MessageStatus": "sent"}, None),
    ({}, None),
])
def test_delivery_report(form: dict[str, str], report: DeliveryReport | None) -> None:
    assert delivery_report(form) == report


# --- the guard: token bucket, breaker, failover ----------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeAdapter(Service):
    """Answers with `outcome`, counting the sends; `gate` (when set) holds each send until opened."""

    channel = "sms"

    def __init__(self, provider: str, outcome: Outcome = Outcome(Result.SENT)) -> None:
        super().__init__()
        self.provider = provider
        self.outcome = outcome
        self.sends = 0
        self.gate: asyncio.Event | None = None

    async def send(self, task: dict[str, Any]) -> Outcome:
        self.sends += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.outcome


FAILING = Outcome(Result.TRANSIENT, "http_503", "down")


def limits(**overrides: Any) -> ProviderGuardSettings:
    return ProviderGuardSettings(**({"rate_per_s": 0.0, "breaker_failures": 3, "breaker_cooldown_s": 30.0}
                                    | overrides))


def guard(primary: FakeAdapter, secondary: FakeAdapter | None, clock: FakeClock, **overrides: Any) -> GuardedAdapter:
    return GuardedAdapter(primary, secondary, limits(**overrides), clock=clock, sleep=clock.sleep)


async def test_breaker_opens_after_n_failures_and_routes_to_the_secondary() -> None:
    clock, primary, secondary = FakeClock(), FakeAdapter("twilio", FAILING), FakeAdapter("twilio-secondary")
    guarded = guard(primary, secondary, clock)
    for _ in range(3):
        outcome = await guarded.send({})
        assert (outcome.result, outcome.provider) == (Result.TRANSIENT, "twilio")
    outcome = await guarded.send({})
    assert (outcome.result, outcome.provider) == (Result.SENT, "twilio-secondary")
    assert (primary.sends, secondary.sends) == (3, 1)


async def test_without_a_secondary_an_open_circuit_says_how_long() -> None:
    clock, primary = FakeClock(), FakeAdapter("twilio", FAILING)
    guarded = guard(primary, None, clock)
    for _ in range(3):
        await guarded.send({})
    clock.now += 10
    outcome = await guarded.send({})
    assert (outcome.result, outcome.code, outcome.retry_after_s) == (Result.TRANSIENT, "circuit_open", 20.0)
    assert primary.sends == 3


async def test_a_success_resets_the_failure_count() -> None:
    clock, primary = FakeClock(), FakeAdapter("twilio", FAILING)
    guarded = guard(primary, None, clock)
    await guarded.send({})
    await guarded.send({})
    primary.outcome = Outcome(Result.PERMANENT, "twilio_21602")  # an answer: the provider works
    await guarded.send({})
    primary.outcome = FAILING
    await guarded.send({})
    await guarded.send({})
    assert (await guarded.send({})).code == "http_503"  # not yet open: only 2 in a row before
    assert primary.sends == 6


async def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock, primary, secondary = FakeClock(), FakeAdapter("twilio", FAILING), FakeAdapter("twilio-secondary")
    guarded = guard(primary, secondary, clock)
    for _ in range(3):
        await guarded.send({})
    clock.now += 30
    primary.outcome, primary.gate = Outcome(Result.SENT), asyncio.Event()
    probe = asyncio.create_task(guarded.send({}))
    await asyncio.sleep(0)
    assert primary.sends == 4  # the probe is with the primary…
    during = await guarded.send({})
    assert during.provider == "twilio-secondary"  # …and nothing else is
    primary.gate.set()
    assert (await probe).provider == "twilio"
    assert (await guarded.send({})).provider == "twilio"  # closed again
    assert (primary.sends, secondary.sends) == (5, 1)


async def test_a_failed_probe_opens_the_breaker_for_another_cooldown() -> None:
    clock, primary = FakeClock(), FakeAdapter("twilio", FAILING)
    guarded = guard(primary, None, clock)
    for _ in range(3):
        await guarded.send({})
    clock.now += 30
    assert (await guarded.send({})).code == "http_503"  # the probe
    clock.now += 29
    outcome = await guarded.send({})
    assert (outcome.code, outcome.retry_after_s) == ("circuit_open", pytest.approx(1.0))
    assert primary.sends == 4


async def test_token_bucket_limits_the_rate() -> None:
    clock, primary = FakeClock(), FakeAdapter("twilio")
    guarded = guard(primary, None, clock, rate_per_s=2.0, rate_burst=2, rate_wait_s=0.25)
    assert [(await guarded.send({})).result for _ in range(2)] == [Result.SENT, Result.SENT]
    outcome = await guarded.send({})
    assert (outcome.result, outcome.code, outcome.provider) == (Result.TRANSIENT, "rate_limited", "twilio")
    assert outcome.retry_after_s == pytest.approx(0.5)
    assert primary.sends == 2
    clock.now += 0.3  # 0.6 token: the next one is 0.2 s away, within the wait
    assert (await guarded.send({})).result is Result.SENT
    assert clock.slept == [pytest.approx(0.2)]
    assert primary.sends == 3


async def test_retry_after_pauses_the_provider() -> None:
    clock, primary = FakeClock(), FakeAdapter("twilio", Outcome(Result.TRANSIENT, "http_429", retry_after_s=5.0))
    guarded = guard(primary, None, clock, rate_per_s=100.0, rate_wait_s=1.0)
    assert (await guarded.send({})).code == "http_429"
    primary.outcome = Outcome(Result.SENT)
    paused = await guarded.send({})
    assert (paused.code, paused.retry_after_s) == ("rate_limited", pytest.approx(5.0))
    clock.now += 4.5  # within the wait: sleeps the last half second
    assert (await guarded.send({})).result is Result.SENT
    assert clock.slept == [pytest.approx(0.5)]


async def test_a_raising_adapter_counts_as_a_failure() -> None:
    class Raising(FakeAdapter):
        async def send(self, task: dict[str, Any]) -> Outcome:
            raise RuntimeError("bug")

    clock = FakeClock()
    guarded = guard(Raising("twilio"), None, clock, breaker_failures=1)
    with pytest.raises(RuntimeError):
        await guarded.send({})
    assert (await guarded.send({})).code == "circuit_open"


async def test_the_sms_adapter_starts_and_stops_both_providers(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, sms=SmsSettings(twilio=account("http://127.0.0.1:9"),
                                                           secondary=account("http://127.0.0.1:9")))
    guarded = sms_adapter(settings)
    adapters = guarded.adapters
    assert [a.provider for a in adapters] == ["twilio", "twilio-secondary"]
    await guarded.start()
    assert all(a.client is not None and not a.client.is_closed for a in adapters)
    await guarded.stop()
    assert all(a.client is not None and a.client.is_closed for a in adapters)


async def test_a_guard_set_keeps_destinations_apart_and_forgets_the_oldest() -> None:
    clock = FakeClock()
    guards = GuardSet(limits(), most=2, clock=clock, sleep=clock.sleep)
    failing, working = FakeAdapter("webhook", FAILING), FakeAdapter("webhook")
    for _ in range(3):
        await guards.get("https://a.example/hook", "webhook").send(lambda: failing.send({}))
    refused = await guards.get("https://a.example/hook", "webhook").send(lambda: failing.send({}))
    assert (refused.code, failing.sends) == ("circuit_open", 3)  # a's breaker is open…
    sent = await guards.get("https://b.example/hook", "webhook").send(lambda: working.send({}))
    assert sent.result is Result.SENT and sent.provider == "webhook"  # …b's is not
    guards.get("https://c.example/hook", "webhook")
    assert list(guards.guards) == ["https://b.example/hook", "https://c.example/hook"]  # at most 2: a forgotten
