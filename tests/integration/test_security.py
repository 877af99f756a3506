"""The pipeline over Kafka TLS and SASL, mailing over STARTTLS with AUTH (issue #10 item 6).

A private stack (tests/stack.py) whose broker has an SSL and a SASL_SSL listener besides the
plaintext one (deploy/local/kafka.sh, certificate made at its first start). Every Herald process
(`herald up`: workers, gateway, sink, tools) and the test's own producer connect to the SASL_SSL
listener with SCRAM-SHA-512, so a client that ignored the security settings could not connect at
all: the broker speaks TLS on that port. The mailbox requires STARTTLS and AUTH, so the same holds
for the email adapter.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError
from pydantic import SecretStr

from sinks.clickhouse_client import connect
from streams.kafka_clients import client_kwargs
from streams.settings import Settings
from streams.topics import create_topics
from tests.integration.pipeline_helpers import Mail, new_tenant, produce, put_template, request, wait_for_statuses
from tests.stack import environment, private_stack, require_stack_tools
from tooling.local import infrastructure, up

SASL = {"HERALD_KAFKA_SASL_USERNAME": "herald-app", "HERALD_KAFKA_SASL_PASSWORD": "kafka-test-secret",
        "HERALD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
SMTP = {"HERALD_SMTP_TLS": "starttls", "HERALD_SMTP_USERNAME": "relay", "HERALD_SMTP_PASSWORD": "smtp-test-secret"}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Settings]:
    """A running private stack whose every client talks to Kafka over SASL_SSL and mails over STARTTLS."""
    require_stack_tools()
    data_dir = tmp_path / "herald"
    # The broker's SCRAM user is stored when its storage is formatted, from the same variables.
    with private_stack(data_dir, {**SASL, **SMTP}):
        infrastructure("start")
        with environment({"HERALD_KAFKA_BOOTSTRAP": f"127.0.0.1:{os.environ['HERALD_KAFKA_SASL_PORT']}",
                          "HERALD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                          "HERALD_KAFKA_SSL_CAFILE": str(data_dir / "kafka" / "tls" / "ca.pem")}):
            settings = Settings()
            # The template is in its topic before the workers start, so they read it as they start.
            create_topics(settings)
            put_template("secure-welcome", ["name"], "Welcome, {{ name }}!", "Hello {{ name }}.")
            up(settings, lambda line: None)
            yield settings


def test_100_notifications_over_kafka_sasl_ssl_reach_the_mailbox_over_starttls(secured: Settings) -> None:
    settings = secured
    tenant = new_tenant()
    producer = KafkaProducer(**client_kwargs(settings), acks="all", linger_ms=10)
    try:
        ids = produce(producer, [request(tenant, f"s-{i}", "secure-welcome", f"secure-user-{i}", f"s{i}@example.com",
                                         {"name": f"Secure {i}"}) for i in range(100)])
    finally:
        producer.close()

    mail = Mail(settings, ids)
    received = mail.wait_for_all(timeout=240)
    assert len(received) == 100, f"{100 - len(received)} of 100 never reached the mailbox"
    assert max(received.values()) == 1
    assert mail.message(ids[5], settings.email_domain)["Subject"] == "Welcome, Secure 5!"
    found = wait_for_statuses(connect(settings), tenant, ids, {"accepted", "sent"}, timeout=120)
    assert all({"accepted", "sent"} <= found.get(i, set()) for i in ids)

    # The listener really insists: a wrong password, or SASL without TLS, gets nothing.
    wrong = settings.model_copy(update={"kafka_sasl_password": SecretStr("wrong")})
    plaintext = settings.model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT"})
    for refused in (wrong, plaintext):
        with pytest.raises(KafkaError):
            KafkaAdminClient(**client_kwargs(refused), request_timeout_ms=5000, bootstrap_timeout_ms=5000).list_topics()
