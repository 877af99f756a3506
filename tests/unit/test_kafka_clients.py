"""streams/kafka_clients.py: one set of settings becomes every Kafka client's connection arguments.
The real broker's TLS and SASL listeners are exercised by tests/integration/test_security.py."""

import ssl
from pathlib import Path

import faust
import pytest
from pydantic import SecretStr

from streams.kafka_clients import client_kwargs, faust_credentials
from streams.settings import Settings
from tooling.peers import keys


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(keys.tls_files()[keys.APNS_CA])
    return path


def test_plaintext_is_the_bootstrap_alone() -> None:
    settings = Settings(kafka_bootstrap="broker:9092")
    assert client_kwargs(settings) == {"bootstrap_servers": "broker:9092", "security_protocol": "PLAINTEXT"}
    assert faust_credentials(settings) is None


def test_ssl_verifies_the_broker_against_the_configured_ca(ca_file: Path) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca_file)
    kwargs = client_kwargs(settings)
    context = kwargs["ssl_context"]
    assert kwargs["security_protocol"] == "SSL" and "sasl_mechanism" not in kwargs
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "Herald local push CA"),),)]
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials) and credentials.protocol.value == "SSL"


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_logs_in_with_the_mechanism_and_credentials(ca_file: Path, protocol: str) -> None:
    settings = Settings(kafka_security_protocol=protocol, kafka_ssl_cafile=ca_file, kafka_sasl_mechanism="SCRAM-SHA-256",
                        kafka_sasl_username="svc", kafka_sasl_password=SecretStr("s3cret"))
    kwargs = client_kwargs(settings)
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == (protocol, "SCRAM-SHA-256")
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc", "s3cret")
    assert ("ssl_context" in kwargs) == (protocol == "SASL_SSL")
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value) == (protocol, "SCRAM-SHA-256")
    assert (credentials.username, credentials.password) == ("svc", "s3cret")
    assert "s3cret" not in repr(settings) + repr(credentials)


def test_sasl_without_credentials_is_a_clear_error() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc")
    with pytest.raises(ValueError, match="HERALD_KAFKA_SASL_PASSWORD"):
        client_kwargs(settings)


def test_a_client_certificate_is_presented_for_mutual_tls(tmp_path: Path, ca_file: Path) -> None:
    files = keys.tls_files()
    (tmp_path / "client.pem").write_bytes(files[keys.APNS_SERVER])  # key and certificate in one file
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca_file,
                        kafka_ssl_certfile=tmp_path / "client.pem")
    assert isinstance(client_kwargs(settings)["ssl_context"], ssl.SSLContext)
    broken = settings.model_copy(update={"kafka_ssl_certfile": ca_file})  # a certificate without its key
    with pytest.raises(ssl.SSLError):
        client_kwargs(broken)


def test_secrets_come_from_files_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "HERALD_KAFKA_SASL_PASSWORD").write_text("from-a-file\n")
    (tmp_path / "HERALD_SMTP_PASSWORD").write_text("smtp-from-a-file")
    monkeypatch.setenv("HERALD_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("HERALD_SMTP_PASSWORD", "smtp-from-the-environment")
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc")
    assert client_kwargs(settings)["sasl_plain_password"] == "from-a-file"
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "smtp-from-the-environment"
