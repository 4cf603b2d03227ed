"""The Kafka clients the settings describe: their cluster and its security.

Apart from ``inboxflow.wiring`` (which re-exports it) so that a process needing only Kafka
clients (a bench peer, a tool) does not import the composition root and, through it, faust's
worker machinery and the Postgres driver.
"""

from __future__ import annotations

from inboxflow.settings import Settings
from topics.kafka import KafkaClients, KafkaSecurity


def kafka_from(settings: Settings, *, client_id: str = "inboxflow") -> KafkaClients:
    """Return the builder of every Kafka client, for the configured cluster and its security.

    Every client the project makes (faust apps, producers, consumers, admin clients, operator
    tools) takes ``INBOXFLOW_KAFKA_SECURITY_PROTOCOL``, the SASL credentials and the TLS files
    from here.

    Raises:
        KafkaConfigError: the security settings contradict each other (e.g. SASL_SSL without a
            password, or a CA file with PLAINTEXT).
    """
    secret = settings.kafka_sasl_password
    password = secret.get_secret_value() if secret is not None else None
    security = KafkaSecurity(
        protocol=settings.kafka_security_protocol,
        mechanism=settings.kafka_sasl_mechanism,
        username=settings.kafka_sasl_username or None,
        password=password or None,
        cafile=settings.kafka_ssl_cafile or None,
        certfile=settings.kafka_ssl_certfile or None,
        keyfile=settings.kafka_ssl_keyfile or None,
    )
    return KafkaClients(settings.kafka_bootstrap_servers, client_id=client_id, security=security)
