"""How every Kafka client Herald runs connects: bootstrap servers, TLS and SASL from the settings.

aiokafka and kafka-python take the same connection arguments (bootstrap_servers, security_protocol,
ssl_context, sasl_mechanism, sasl_plain_username/password), so both call `client_kwargs`; Faust
takes the same as a credentials object (`faust_credentials`). Nothing else builds them.
"""

import ssl
from typing import Any

import faust
from faust.auth import Credentials

from streams.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL: the broker's certificate checked against the configured CA
    (the system's when unset) and its host name; a client certificate when one is configured."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return context


def sasl_login(settings: Settings) -> tuple[str, str]:
    """The SASL username and password; a clear error when SASL is on without them."""
    if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
        raise ValueError(f"kafka_security_protocol={settings.kafka_security_protocol} needs kafka_sasl_username "
                         "and kafka_sasl_password (HERALD_KAFKA_SASL_USERNAME, HERALD_KAFKA_SASL_PASSWORD)")
    return settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for an aiokafka or kafka-python client (producer, consumer, admin)."""
    kwargs: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap,
                              "security_protocol": settings.kafka_security_protocol}
    if context := ssl_context(settings):
        kwargs["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        username, password = sasl_login(settings)
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=username,
                      sasl_plain_password=password)
    return kwargs


def faust_credentials(settings: Settings) -> Credentials | None:
    """The same settings as Faust's broker_credentials (None: plaintext)."""
    context = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        username, password = sasl_login(settings)
        return faust.SASLCredentials(username=username, password=password, ssl_context=context,
                                     mechanism=settings.kafka_sasl_mechanism)
    return faust.SSLCredentials(context) if context else None
