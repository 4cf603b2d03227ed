"""Kafka transport security from settings: what each protocol sends, what is refused at once."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from pydantic import SecretStr

from devstack.tls import make_ca
from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from
from schemas.errors import PermanentError, RetryClass
from topics.kafka import (
    PLAINTEXT,
    KafkaAuthError,
    KafkaClients,
    KafkaConfigError,
    KafkaSecurity,
    _servers,
)


@pytest.fixture(scope="module")
def cafile(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_ca(tmp_path_factory.mktemp("ca")).cert_path)


def test_plaintext_is_the_default_and_sends_nothing_else() -> None:
    kafka = KafkaClients("127.0.0.1:9092")
    assert kafka.security == PLAINTEXT
    assert kafka.security.client_options() == {"security_protocol": "PLAINTEXT"}
    assert kafka.faust_settings() == {"broker": ["kafka://127.0.0.1:9092"]}


def test_sasl_ssl_gives_every_client_the_same_credentials_and_a_verifying_context(
    cafile: str,
) -> None:
    security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", "alice", "s3cret", cafile=cafile)
    options = security.client_options()
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret",
    }
    context = options["ssl_context"]
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert "s3cret" not in repr(security)


def test_faust_gets_sasl_ssl_credentials_that_map_to_the_same_aiokafka_arguments(
    cafile: str,
) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "alice", "s3cret", cafile=cafile)
    settings = KafkaClients("h1:9093,h2:9093", security=security).faust_settings()
    assert settings["broker"] == ["kafka://h1:9093", "kafka://h2:9093"]
    credentials = settings["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    mapped = credentials_to_aiokafka_auth(credentials)
    assert mapped["security_protocol"] == "SASL_SSL"
    assert (mapped["sasl_mechanism"], mapped["sasl_plain_username"]) == ("SCRAM-SHA-512", "alice")
    assert isinstance(mapped["ssl_context"], ssl.SSLContext)


def test_faust_gets_sasl_plaintext_and_ssl_only_right() -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    sasl_plain = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "alice", "s3cret").faust_credentials()
    assert credentials_to_aiokafka_auth(sasl_plain)["security_protocol"] == "SASL_PLAINTEXT"
    tls_only = KafkaSecurity("SSL").faust_credentials()
    assert isinstance(tls_only, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(tls_only)["security_protocol"] == "SSL"


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"protocol": "SASL_SSL"}, "INBOXFLOW_KAFKA_SASL_PASSWORD"),
        ({"protocol": "SASL_PLAINTEXT", "username": "alice"}, "INBOXFLOW_KAFKA_SASL_PASSWORD"),
        ({"cafile": "/ca.pem"}, "INBOXFLOW_KAFKA_SSL_CAFILE"),
        (
            {"protocol": "SASL_PLAINTEXT", "username": "a", "password": "b", "cafile": "/ca.pem"},
            "INBOXFLOW_KAFKA_SECURITY_PROTOCOL",
        ),
        ({"username": "alice", "password": "s3cret"}, "INBOXFLOW_KAFKA_SECURITY_PROTOCOL"),
        ({"protocol": "SSL", "keyfile": "/key.pem"}, "INBOXFLOW_KAFKA_SSL_CERTFILE"),
        (
            {"protocol": "SASL_SSL", "mechanism": "GSSAPI", "username": "a", "password": "b"},
            "GSSAPI",
        ),
        ({"protocol": "TLS"}, "INBOXFLOW_KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_contradictory_settings_fail_at_construction_naming_the_setting(
    kwargs: dict[str, str], names: str
) -> None:
    with pytest.raises(KafkaConfigError, match=names) as caught:
        KafkaSecurity(**kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert caught.value.retry_class is RetryClass.PERMANENT


def test_an_unreadable_ca_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    security = KafkaSecurity("SSL", cafile=str(tmp_path / "missing.pem"))
    with pytest.raises(KafkaConfigError, match=r"missing\.pem"):
        security.ssl_context()


def test_settings_reach_every_client_through_kafka_from(cafile: str) -> None:
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="alice",
        kafka_sasl_password=SecretStr("s3cret"),
        kafka_ssl_cafile=cafile,
    )
    kafka = kafka_from(settings, client_id="t")
    assert kafka.security == KafkaSecurity("SASL_SSL", "PLAIN", "alice", "s3cret", cafile=cafile)
    assert kafka.with_client_id("other").security == kafka.security


def test_kafka_from_refuses_sasl_without_a_password() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="alice")
    with pytest.raises(KafkaConfigError, match="INBOXFLOW_KAFKA_SASL_PASSWORD"):
        kafka_from(settings)


def test_auth_errors_are_permanent() -> None:
    assert issubclass(KafkaAuthError, PermanentError)
    assert KafkaAuthError.retry_class is RetryClass.PERMANENT


@pytest.mark.parametrize(
    ("text", "servers"),
    [
        ("127.0.0.1:9092", [("127.0.0.1", 9092)]),
        (" a:1 , b:2 ,", [("a", 1), ("b", 2)]),
        ("broker", [("broker", 9092)]),
        ("[::1]:9093", [("::1", 9093)]),
    ],
)
def test_bootstrap_servers_split_into_hosts_and_ports(
    text: str, servers: list[tuple[str, int]]
) -> None:
    assert _servers(text) == servers
