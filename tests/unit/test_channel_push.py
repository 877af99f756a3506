"""agents/channels/push.py and its providers (apns.py, fcm.py, webpush.py) against the local peers.

Each provider's real client (httpx over HTTP/2 + PyJWT for APNs, google-auth + httpx for FCM,
pywebpush for web push) talks to its peer (tooling/peers/apns.py, fcm.py, webpush.py) started
in-process on a free loopback port; the peers verify the credentials and decrypt what they got.
"""

import asyncio
import base64
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agents.channels import CHANNELS
from agents.channels.base import Outcome, Result
from agents.channels.push import PushAdapter, push_token, push_tokens
from agents.validate import address_problem
from streams.settings import Settings
from tests.unit import records
from tooling.peers import apns as apns_peer
from tooling.peers import fcm as fcm_peer
from tooling.peers import keys
from tooling.peers import server as peers_server
from tooling.peers import webpush as webpush_peer
from tooling.peers.keys import pem
from tooling.peers.server import Fault, Peer, read_receipts

APNS_TOKEN = "ab" * 32
FCM_TOKEN = "dGVzdC1kZXZpY2U:APA91bH" + "x" * 140


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def webpush_token(subscription: Any) -> str:
    return "webpush:" + b64(json.dumps(subscription).encode())


def subscription(endpoint: str = "https://fcm.googleapis.com/fcm/send/abc", p256dh: bytes | None = None,
                 auth: bytes = b"a" * 16) -> dict[str, Any]:
    point = p256dh if p256dh is not None else ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"endpoint": endpoint, "keys": {"p256dh": b64(point), "auth": b64(auth)}}


# --- tokens -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("push"))


def test_valid_tokens_are_normalised(settings: Settings) -> None:
    assert push_token("apns:" + "AB" * 32, settings) == "apns:" + "ab" * 32
    assert push_token("fcm:" + FCM_TOKEN, settings) == "fcm:" + FCM_TOKEN
    info = subscription()
    token = push_token(webpush_token(info | {"expirationTime": None}), settings)
    kind, _, value = token.partition(":")
    assert kind == "webpush"
    assert json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) == info
    assert push_token(token, settings) == token  # canonical: normalising again changes nothing


def test_longer_apns_tokens_are_accepted(settings: Settings) -> None:
    assert push_token("apns:" + "0f" * 100, settings) == "apns:" + "0f" * 100


NOT_ON_CURVE = b"\x04" + b"\x00" * 64

INVALID = {
    "empty": "",
    "no provider": "tok-a",
    "unknown provider": "gcm:" + FCM_TOKEN,
    "provider in capitals": "APNS:" + APNS_TOKEN,
    "apns empty": "apns:",
    "apns short": "apns:" + "a" * 62,
    "apns odd length": "apns:" + "a" * 65,
    "apns not hex": "apns:" + "g" * 64,
    "apns fullwidth digits": "apns:" + "\uff10" * 64,
    "apns trailing newline": "apns:" + APNS_TOKEN + "\n",
    "apns too long": "apns:" + "ab" * 101,
    "apns path": "apns:" + APNS_TOKEN + "/../x",
    "fcm short": "fcm:abc",
    "fcm space": "fcm:" + FCM_TOKEN[:40] + " " + FCM_TOKEN[40:],
    "fcm nul": "fcm:" + FCM_TOKEN + "\x00",
    "fcm slash": "fcm:" + FCM_TOKEN + "/x",
    "fcm too long": "fcm:" + "a" * 1025,
    "huge": "fcm:" + "a" * 10_000,
    "webpush not base64": "webpush:not base64!",
    "webpush not json": "webpush:" + b64(b"hello"),
    "webpush json list": webpush_token([1, 2]),
    "webpush no keys": webpush_token({"endpoint": "https://fcm.googleapis.com/x"}),
    "webpush http": webpush_token(subscription("http://fcm.googleapis.com/x")),
    "webpush other host": webpush_token(subscription("https://evil.example.com/x")),
    "webpush metadata ip": webpush_token(subscription("https://169.254.169.254/latest")),
    "webpush userinfo": webpush_token(subscription("https://fcm.googleapis.com@evil.example.com/x")),
    "webpush backslash": webpush_token(subscription("https://evil.example.com\\@fcm.googleapis.com/x")),
    "webpush tab": webpush_token(subscription("https://fcm.googleapis.com\t.evil.example.com/x")),
    "webpush javascript": webpush_token(subscription("javascript:alert(1)")),
    "webpush endpoint not a string": webpush_token(subscription() | {"endpoint": 1}),
    "webpush subdomain of an exact host": webpush_token(subscription("https://x.fcm.googleapis.com/x")),
    "webpush p256dh short": webpush_token(subscription(p256dh=b"\x04" + b"\x01" * 63)),
    "webpush p256dh off the curve": webpush_token(subscription(p256dh=NOT_ON_CURVE)),
    "webpush auth short": webpush_token(subscription(auth=b"a" * 15)),
    "webpush key not a string": webpush_token({"endpoint": "https://fcm.googleapis.com/x",
                                               "keys": {"p256dh": 1, "auth": "YWFhYWFhYWFhYWFhYWFhYQ"}}),
}


@pytest.mark.parametrize("raw", INVALID.values(), ids=INVALID.keys())
def test_invalid_tokens_are_refused_with_a_reason(settings: Settings, raw: str) -> None:
    with pytest.raises(ValueError) as error:
        push_token(raw, settings)
    assert str(error.value)


@pytest.mark.parametrize("raw", [None, 123, ["apns:" + APNS_TOKEN]])
def test_non_strings_are_refused(settings: Settings, raw: Any) -> None:
    with pytest.raises(ValueError):
        push_token(raw, settings)


def test_push_endpoints_of_the_big_push_services_are_allowed(settings: Settings) -> None:
    for endpoint in ("https://fcm.googleapis.com/fcm/send/x", "https://updates.push.services.mozilla.com/wpush/v2/x",
                     "https://wns2-par02p.notify.windows.com/w/?token=x", "https://web.push.apple.com/QG"):
        assert push_token(webpush_token(subscription(endpoint)), settings).startswith("webpush:")


def test_validate_refuses_a_bad_token_as_invalid_push_token() -> None:
    notification = records.notification(recipient=records.recipient(push_tokens=["apns:" + APNS_TOKEN, "apns:zz"]))
    problem = address_problem(notification, ["push"], None)
    assert problem is not None
    assert problem.reason_code == CHANNELS["push"].invalid_reason == "invalid_push_token"
    assert "apns:zz" in problem.detail


def test_tokens_come_from_the_request_else_the_preferences() -> None:
    preferences = records.preferences(push_tokens=["fcm:" + FCM_TOKEN])
    assert push_tokens(records.recipient(push_tokens=["apns:a", "apns:b"]), preferences) == ["apns:a", "apns:b"]
    assert push_tokens(records.recipient(), preferences) == ["fcm:" + FCM_TOKEN]
    assert push_tokens(records.recipient(), None) == []


# --- the adapter against the peers ---------------------------------------------------------------------


class Peers:
    def __init__(self, base: Path, settings: Settings) -> None:
        self.peers = {name: Peer(name, base / name) for name in ("apns", "fcm", "webpush")}
        self.settings = settings
        self.url = ""
        self.apns_port = 0

    def receipts(self, name: str) -> list[dict[str, Any]]:
        return list(read_receipts(self.peers[name].directory))

    def fault(self, name: str, **fault: Any) -> None:
        self.peers[name].faults = Fault.from_json(fault)


@pytest.fixture
async def peers(settings: Settings, tmp_path: Path) -> AsyncIterator[Peers]:
    running = Peers(tmp_path, settings)
    app = web.Application()
    app.add_routes(fcm_peer.routes(running.peers["fcm"], settings))
    app.add_routes(webpush_peer.routes(running.peers["webpush"], settings))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    running.url = str(server.make_url("")).rstrip("/")
    listening = socket.create_server(("127.0.0.1", 0))
    running.apns_port = listening.getsockname()[1]
    shutdown = asyncio.Event()
    apns_task = asyncio.create_task(apns_peer.run(running.peers["apns"], settings, listening, shutdown))
    yield running
    shutdown.set()
    await apns_task
    await server.close()


def adapter_settings(settings: Settings, peers: Peers, **push: dict[str, Any]) -> Settings:
    blocks = {"apns": {"port": peers.apns_port, "timeout_s": 5.0},
              "fcm": {"base_url": peers.url, "token_uri": f"{peers.url}/token", "timeout_s": 5.0},
              "webpush": {"timeout_s": 5.0}}
    for name, overrides in push.items():
        blocks[name] |= overrides
    return Settings(data_dir=settings.data_dir, push=blocks)


@pytest.fixture
async def adapter_for(settings: Settings, peers: Peers) -> AsyncIterator[Any]:
    started: list[PushAdapter] = []

    async def start(**push: dict[str, Any]) -> PushAdapter:
        adapter = PushAdapter(adapter_settings(settings, peers, **push))
        await adapter.start()
        started.append(adapter)
        return adapter

    yield start
    for adapter in started:
        await adapter.stop()


def task(address: str, **overrides: Any) -> dict[str, Any]:
    content = records.content("push", subject="Your order shipped", text="Order 42 is on its way – ✓",
                              html=None, data={"order": "42", "aps": "not the aps"})
    return records.delivery_task(channel="push", address=address, content=content, priority="high") | overrides


async def new_subscription(peers: Peers, subscription_id: str = "sub-1") -> str:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{peers.url}/push/_subscribe", params={"id": subscription_id})
    return str(response.json()["token"])


def other_ec_key() -> str:
    return pem(ec.generate_private_key(ec.SECP256R1())).decode()


# APNs


async def test_apns_sends_over_http2_with_a_verified_jwt(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    outcome = await adapter.send(task("apns:" + APNS_TOKEN.upper()))
    assert (outcome.result, outcome.provider) == (Result.SENT, "apns")
    [receipt] = peers.receipts("apns")
    assert receipt["http_version"] == "2"
    assert receipt["device_token"] == APNS_TOKEN
    assert receipt["apns_id"] == str(records.NOTIFICATION_ID)
    assert (receipt["topic"], receipt["push_type"], receipt["priority"]) == ("io.herald.app", "alert", "10")
    assert receipt["payload"] == {"aps": {"alert": {"title": "Your order shipped", "body": "Order 42 is on its way – ✓"}},
                                  "order": "42"}


async def test_apns_normal_priority_is_5_and_a_resend_is_the_same_apns_id(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    for _ in range(2):
        assert (await adapter.send(task("apns:" + APNS_TOKEN, priority="normal"))).result is Result.SENT
    first, second = peers.receipts("apns")
    assert first["priority"] == "5"
    assert (first["duplicate"], second["duplicate"]) == (False, True)


async def test_apns_dead_token_is_a_dead_address(peers: Peers, adapter_for: Any) -> None:
    peers.fault("apns", dead=[APNS_TOKEN])
    outcome = await (await adapter_for()).send(task("apns:" + APNS_TOKEN))
    assert (outcome.result, outcome.code, outcome.provider) == (Result.DEAD_ADDRESS, "apns_Unregistered", "apns")
    assert peers.receipts("apns") == []


def assert_held_back(outcome: Outcome, retry_after_s: float) -> None:
    """The provider's Retry-After holds the next send back too (agents/channels/guard.py)."""
    assert (outcome.result, outcome.code) == (Result.TRANSIENT, "rate_limited")
    assert retry_after_s - 1 < outcome.retry_after_s <= retry_after_s


@pytest.mark.parametrize(("status", "code"), [(429, "apns_TooManyRequests"), (503, "apns_ServiceUnavailable")])
async def test_apns_throttling_and_outages_are_transient(peers: Peers, adapter_for: Any, status: int, code: str) -> None:
    peers.fault("apns", status=status, count=1, retry_after_s=7)
    adapter = await adapter_for()
    outcome = await adapter.send(task("apns:" + APNS_TOKEN))
    assert (outcome.result, outcome.code, outcome.retry_after_s) == (Result.TRANSIENT, code, 7.0)
    assert_held_back(await adapter.send(task("apns:" + APNS_TOKEN)), 7)
    adapter.guards.guards.clear()  # the provider's pause over
    assert (await adapter.send(task("apns:" + APNS_TOKEN))).result is Result.SENT


async def test_apns_expired_provider_token_is_renewed(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    sender = adapter.senders["apns"]
    sender.token.header()
    before = sender.token.value
    peers.fault("apns", status=403, count=1)
    outcome = await adapter.send(task("apns:" + APNS_TOKEN))
    assert (outcome.result, outcome.code) == (Result.TRANSIENT, "apns_ExpiredProviderToken")
    assert (await adapter.send(task("apns:" + APNS_TOKEN))).result is Result.SENT
    assert sender.token.value != before


async def test_apns_refuses_a_token_signed_with_another_key(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for(apns={"private_key": other_ec_key()})
    outcome = await adapter.send(task("apns:" + APNS_TOKEN))
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "apns_InvalidProviderToken")
    assert peers.receipts("apns") == []


async def test_apns_refuses_another_team(peers: Peers, adapter_for: Any) -> None:
    outcome = await (await adapter_for(apns={"team_id": "OTHERTEAM1"})).send(task("apns:" + APNS_TOKEN))
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "apns_InvalidProviderToken")


async def test_apns_checks_the_peer_certificate(peers: Peers, adapter_for: Any, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(keys.tls_files()[keys.APNS_CA])
    outcome = await (await adapter_for(apns={"ca_file": str(other_ca)})).send(task("apns:" + APNS_TOKEN))
    assert (outcome.result, outcome.code) == (Result.TRANSIENT, "apns_connection")
    assert "CERTIFICATE_VERIFY_FAILED" in (outcome.detail or "")


# FCM


async def test_fcm_sends_with_an_oauth_token_from_the_service_account(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    outcome = await adapter.send(task("fcm:" + FCM_TOKEN))
    assert (outcome.result, outcome.provider) == (Result.SENT, "fcm")
    token = adapter.senders["fcm"].access.credentials.token
    assert (await adapter.send(task("fcm:" + FCM_TOKEN, priority="normal"))).result is Result.SENT
    assert adapter.senders["fcm"].access.credentials.token == token  # cached until it nears expiry
    first, second = peers.receipts("fcm")
    assert first["token"] == FCM_TOKEN
    assert first["notification"] == {"title": "Your order shipped", "body": "Order 42 is on its way – ✓"}
    assert first["data"] == {"order": "42", "aps": "not the aps"}
    assert first["android"] == {"priority": "HIGH", "collapse_key": records.NOTIFICATION_ID.hex}
    assert (second["android"]["priority"], second["duplicate"]) == ("NORMAL", True)


async def test_fcm_unregistered_token_is_a_dead_address(peers: Peers, adapter_for: Any) -> None:
    peers.fault("fcm", dead=[FCM_TOKEN])
    outcome = await (await adapter_for()).send(task("fcm:" + FCM_TOKEN))
    assert (outcome.result, outcome.code, outcome.provider) == (Result.DEAD_ADDRESS, "fcm_UNREGISTERED", "fcm")


@pytest.mark.parametrize(("status", "code"), [(429, "fcm_QUOTA_EXCEEDED"), (503, "fcm_UNAVAILABLE")])
async def test_fcm_quota_and_outages_are_transient(peers: Peers, adapter_for: Any, status: int, code: str) -> None:
    peers.fault("fcm", status=status, count=1, retry_after_s=12)
    adapter = await adapter_for()
    outcome = await adapter.send(task("fcm:" + FCM_TOKEN))
    assert (outcome.result, outcome.code, outcome.retry_after_s) == (Result.TRANSIENT, code, 12.0)
    assert_held_back(await adapter.send(task("fcm:" + FCM_TOKEN)), 12)
    adapter.guards.guards.clear()  # the provider's pause over
    assert (await adapter.send(task("fcm:" + FCM_TOKEN))).result is Result.SENT


async def test_fcm_refused_access_token_is_renewed(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    assert (await adapter.send(task("fcm:" + FCM_TOKEN))).result is Result.SENT
    credentials = adapter.senders["fcm"].access.credentials
    credentials.token = "ya29.revoked"  # still within its expiry, as a token the server revoked would be
    outcome = await adapter.send(task("fcm:" + FCM_TOKEN))
    assert (outcome.result, outcome.code) == (Result.TRANSIENT, "fcm_UNAUTHENTICATED")
    assert (await adapter.send(task("fcm:" + FCM_TOKEN))).result is Result.SENT
    assert credentials.token != "ya29.revoked"


async def test_fcm_token_endpoint_refuses_another_key(peers: Peers, adapter_for: Any, settings: Settings) -> None:
    account = keys.fcm_service_account(settings) | {"private_key": pem(rsa.generate_private_key(65537, 2048)).decode()}
    adapter = await adapter_for(fcm={"service_account_json": json.dumps(account)})
    outcome = await adapter.send(task("fcm:" + FCM_TOKEN))
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "fcm_oauth")
    assert "Invalid JWT Signature" in (outcome.detail or "")
    assert peers.receipts("fcm") == []


# Web push


async def test_webpush_sends_what_the_peer_decrypts(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    outcome = await adapter.send(task(await new_subscription(peers)))
    assert (outcome.result, outcome.provider) == (Result.SENT, "webpush")
    [receipt] = peers.receipts("webpush")
    assert receipt["subscription"] == "sub-1"
    assert receipt["payload"] == {"title": "Your order shipped", "body": "Order 42 is on its way – ✓",
                                  "data": {"order": "42", "aps": "not the aps"},
                                  "notification_id": records.NOTIFICATION_ID.hex}
    assert (receipt["topic"], receipt["urgency"], receipt["ttl"]) == (records.NOTIFICATION_ID.hex, "high", 86400)


@pytest.mark.parametrize("status", [404, 410])
async def test_webpush_gone_subscription_is_a_dead_address(peers: Peers, adapter_for: Any, status: int) -> None:
    peers.fault("webpush", status=status, count=1)
    outcome = await (await adapter_for()).send(task(await new_subscription(peers)))
    assert (outcome.result, outcome.code) == (Result.DEAD_ADDRESS, f"webpush_{status}")


async def test_webpush_dead_subscription_is_a_dead_address(peers: Peers, adapter_for: Any) -> None:
    peers.fault("webpush", dead=["sub-dead"])
    outcome = await (await adapter_for()).send(task(await new_subscription(peers, "sub-dead")))
    assert (outcome.result, outcome.code) == (Result.DEAD_ADDRESS, "webpush_410")


@pytest.mark.parametrize("status", [429, 503])
async def test_webpush_throttling_and_outages_are_transient(peers: Peers, adapter_for: Any, status: int) -> None:
    peers.fault("webpush", status=status, count=1, retry_after_s=3)
    adapter = await adapter_for()
    token = await new_subscription(peers)
    outcome = await adapter.send(task(token))
    assert (outcome.result, outcome.code, outcome.retry_after_s) == (Result.TRANSIENT, f"webpush_{status}", 3.0)
    assert_held_back(await adapter.send(task(token)), 3)
    adapter.guards.guards.clear()  # the provider's pause over
    assert (await adapter.send(task(token))).result is Result.SENT


async def test_webpush_too_large_is_permanent(peers: Peers, adapter_for: Any) -> None:
    peers.fault("webpush", status=413, count=1)
    outcome = await (await adapter_for()).send(task(await new_subscription(peers)))
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "webpush_413")


async def test_webpush_refuses_another_vapid_key(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for(webpush={"vapid_private_key": other_ec_key()})
    outcome = await adapter.send(task(await new_subscription(peers)))
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "webpush_403")
    assert peers.receipts("webpush") == []


# Dispatch


async def test_an_invalid_token_is_refused_before_any_provider(peers: Peers, adapter_for: Any) -> None:
    outcome = await (await adapter_for()).send(task("apns:" + "zz" * 32))
    assert (outcome.result, outcome.code, outcome.provider) == (Result.PERMANENT, "invalid_address", None)


async def test_a_subscription_to_a_host_not_allowed_is_refused_at_the_point_of_use(peers: Peers, adapter_for: Any) -> None:
    token = await new_subscription(peers)
    adapter = await adapter_for(webpush={"allowed_hosts": ["fcm.googleapis.com"]})
    outcome = await adapter.send(task(token))
    assert (outcome.result, outcome.code) == (Result.PERMANENT, "invalid_address")
    assert "not an allowed push service" in (outcome.detail or "")
    assert peers.receipts("webpush") == []


async def test_one_adapter_sends_to_every_kind_of_device(peers: Peers, adapter_for: Any) -> None:
    adapter = await adapter_for()
    tokens = ["apns:" + APNS_TOKEN, "fcm:" + FCM_TOKEN, await new_subscription(peers)]
    outcomes = await asyncio.gather(*(adapter.send(task(t, notification_id=uuid.uuid4())) for t in tokens))
    assert [(o.result, o.provider) for o in outcomes] == [(Result.SENT, "apns"), (Result.SENT, "fcm"),
                                                          (Result.SENT, "webpush")]


async def test_the_peers_process_runs_apns_beside_the_http_peers_and_faults_cover_it(settings: Settings) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    local = Settings(data_dir=settings.data_dir, push={"apns": {"port": port}})
    app = peers_server.make_app(local)
    for name, server in peers_server.extra_servers().items():  # what serve() adds
        app.cleanup_ctx.append(server(app["peers"][name], local))
    http = TestServer(app, host="127.0.0.1")
    await http.start_server()
    adapter = PushAdapter(Settings(data_dir=settings.data_dir, push={
        "apns": {"port": port}, "fcm": {"base_url": str(http.make_url("")).rstrip("/")}}))
    await adapter.start()
    try:
        async with httpx.AsyncClient() as client:
            await client.post(str(http.make_url("/_faults/apns")), json={"dead": [APNS_TOKEN]})
        outcome = await adapter.send(task("apns:" + APNS_TOKEN))
        assert (outcome.result, outcome.code) == (Result.DEAD_ADDRESS, "apns_Unregistered")
        assert set(app["peers"]) >= {"apns", "fcm", "webpush"}
    finally:
        await adapter.stop()
        await http.close()
