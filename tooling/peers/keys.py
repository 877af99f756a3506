"""Local-only keys and certificates for the push providers, made on first use in <data_dir>/peers/keys.

Both sides read the same files: the local peers (tooling/peers/apns.py, fcm.py, webpush.py) verify
with the public halves, and the push adapters (agents/channels/apns.py, fcm.py, webpush.py) sign
with the private ones when no real credentials are configured. Nothing here is for production:
there, HERALD_PUSH__* settings hold the keys Apple, Google and the VAPID key pair the app's web
client subscribed with.

- apns-auth-key.p8: the APNs token-auth key (EC P-256, PKCS#8 PEM, like the .p8 Apple hands out).
- apns-ca.pem, apns-server.pem: a self-signed CA and the TLS certificate and key of the local
  peers that speak TLS (the APNs peer, the mailbox), issued by it for 127.0.0.1 and localhost.
- fcm-service-account.json: a Google service account (RSA 2048 key) in Google's JSON key format.
- vapid-private.pem: the web push VAPID key (EC P-256, PKCS#8 PEM).
- webpush-seed: the secret the web push peer derives its subscriptions' keys from (`subscription_keys`).

The whole set is written to a temporary directory and renamed into place, so two processes that
start at once agree on one set.
"""

import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from streams.settings import Settings

APNS_KEY = "apns-auth-key.p8"
APNS_CA = "apns-ca.pem"
APNS_SERVER = "apns-server.pem"
FCM_ACCOUNT = "fcm-service-account.json"
VAPID_KEY = "vapid-private.pem"
WEBPUSH_SEED = "webpush-seed"
FCM_CLIENT_EMAIL = "herald-local@herald-local.iam.gserviceaccount.com"


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
                issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def tls_files() -> dict[str, bytes]:
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("Herald local push CA", ca_key, None, ca_key, ca=True)
    server = certificate("127.0.0.1", server_key, ca.subject, ca_key, ca=False)
    return {APNS_CA: ca.public_bytes(serialization.Encoding.PEM),
            APNS_SERVER: pem(server_key) + server.public_bytes(serialization.Encoding.PEM)}


def service_account() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return json.dumps({
        "type": "service_account", "project_id": "herald-local", "private_key_id": os.urandom(20).hex(),
        "private_key": pem(key).decode(), "client_email": FCM_CLIENT_EMAIL, "client_id": "1",
        # The adapter's token_uri setting says where tokens come from; this is what Google's files hold.
        "token_uri": "https://oauth2.googleapis.com/token",
    }, indent=2).encode()


def generate() -> dict[str, bytes]:
    return {APNS_KEY: pem(ec.generate_private_key(ec.SECP256R1())), **tls_files(),
            FCM_ACCOUNT: service_account(), VAPID_KEY: pem(ec.generate_private_key(ec.SECP256R1())),
            WEBPUSH_SEED: os.urandom(32).hex().encode()}


def keys_dir(settings: Settings) -> Path:
    """The directory of local keys, made with a fresh set the first time any process asks."""
    directory = settings.data_dir / "peers" / "keys"
    if directory.is_dir():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=directory.parent))
    for name, content in generate().items():
        (staging / name).write_bytes(content)
    try:
        staging.rename(directory)  # atomic; fails when another process got there first
    except OSError:
        shutil.rmtree(staging)
    return directory


def read(settings: Settings, name: str) -> bytes:
    return (keys_dir(settings) / name).read_bytes()


def apns_auth_key(settings: Settings) -> str:
    return read(settings, APNS_KEY).decode()


class TlsFiles(NamedTuple):
    ca: Path
    server: Path  # key and certificate in one PEM file


def local_tls(settings: Settings) -> TlsFiles:
    """The local CA and the certificate it issued for 127.0.0.1 and localhost, which every local TLS
    peer serves: the APNs peer and the mailbox (STARTTLS or implicit TLS)."""
    directory = keys_dir(settings)
    return TlsFiles(directory / APNS_CA, directory / APNS_SERVER)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def client_tls_context(ca_file: Path | None, host: str, settings: Settings) -> ssl.SSLContext:
    """A client's TLS context for `host`: trust the configured CA; unset, the local CA for a loopback
    host (the local peers), the system's otherwise."""
    ca_file = ca_file or (local_tls(settings).ca if is_loopback(host) else None)
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def fcm_service_account(settings: Settings) -> dict[str, Any]:
    return json.loads(read(settings, FCM_ACCOUNT))


def vapid_private_key(settings: Settings) -> str:
    return read(settings, VAPID_KEY).decode()


class SubscriptionKeys(NamedTuple):
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes


def subscription_keys(settings: Settings, subscription_id: str) -> SubscriptionKeys:
    """The keys of the web push peer's subscription `subscription_id`, derived from the local seed:
    the private scalar is HMAC-SHA256(seed, "p256dh:" + id) reduced into [1, n-1], the auth secret
    the first 16 bytes of HMAC-SHA256(seed, "auth:" + id). A browser makes these at random and keeps
    them; deriving them lets the peer decrypt for any subscription it handed out, across restarts."""
    seed = read(settings, WEBPUSH_SEED)
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's group order n
    digest = hmac.new(seed, f"p256dh:{subscription_id}".encode(), hashlib.sha256).digest()
    scalar = int.from_bytes(digest, "big") % (order - 1) + 1
    auth = hmac.new(seed, f"auth:{subscription_id}".encode(), hashlib.sha256).digest()[:16]
    return SubscriptionKeys(ec.derive_private_key(scalar, ec.SECP256R1()), auth)
