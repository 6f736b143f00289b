"""The Kafka security settings reach every client: the exact configurations built for each
protocol, the errors that name the variable, and no client built around them."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streams.runtime import kafka
from streams.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = {"KAFKA_BOOTSTRAP_SERVERS": "b1:9093,b2:9093"}
SCRAM = {"RETENTION_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "RETENTION_KAFKA_SASL_USERNAME": "svc", "RETENTION_KAFKA_SASL_PASSWORD": "s3cret"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate (the CA and the client's) with a plain and an encrypted key."""
    tmp = tmp_path_factory.mktemp("pki")
    subj = ["-days", "1", "-subj", "/CN=retention-test"]
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp / "key.pem", "-out", tmp / "cert.pem", *subj],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-passout", "pass:keypw", "-keyout", tmp / "enc.pem",
                    "-out", tmp / "enc-cert.pem", *subj], check=True, capture_output=True)
    return {name: tmp / f"{name}.pem" for name in ("cert", "key", "enc", "enc-cert")}


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in {**BASE, **env}.items():
        monkeypatch.setenv(name, str(value))
    return Settings()


def test_plaintext_is_the_default_and_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch)
    assert kafka.confluent_config(s) == {"bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "PLAINTEXT"}
    assert kafka.faust_credentials(s) is None
    assert kafka.aiokafka_security(s) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_scram_with_a_private_ca(monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]) -> None:
    s = settings(monkeypatch, RETENTION_KAFKA_SECURITY_PROTOCOL="SASL_SSL", RETENTION_KAFKA_SSL_CAFILE=str(pki["cert"]), **SCRAM)
    assert kafka.confluent_config(s, **{"group.id": "g"}) == {
        "bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "SASL_SSL", "ssl.ca.location": str(pki["cert"]),
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc", "sasl.password": "s3cret", "group.id": "g",
    }
    auth = dict(kafka.aiokafka_security(s))
    context = auth.pop("ssl_context")
    assert auth == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc", "sasl_plain_password": "s3cret"}
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "retention-test"),),)]


def test_sasl_plaintext_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, RETENTION_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", RETENTION_KAFKA_SASL_MECHANISM="PLAIN",
                 RETENTION_KAFKA_SASL_USERNAME="key", RETENTION_KAFKA_SASL_PASSWORD="secret")
    assert kafka.confluent_config(s) == {"bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "SASL_PLAINTEXT",
                                         "sasl.mechanism": "PLAIN", "sasl.username": "key", "sasl.password": "secret"}
    assert kafka.aiokafka_security(s) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                          "sasl_plain_username": "key", "sasl_plain_password": "secret", "ssl_context": None}


def test_mutual_tls_with_an_encrypted_key(monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]) -> None:
    s = settings(monkeypatch, RETENTION_KAFKA_SECURITY_PROTOCOL="SSL", RETENTION_KAFKA_SSL_CERTFILE=str(pki["enc-cert"]),
                 RETENTION_KAFKA_SSL_KEYFILE=str(pki["enc"]), RETENTION_KAFKA_SSL_KEY_PASSWORD="keypw")
    assert kafka.confluent_config(s) == {
        "bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "SSL", "ssl.certificate.location": str(pki["enc-cert"]),
        "ssl.key.location": str(pki["enc"]), "ssl.key.password": "keypw",
    }
    auth = kafka.aiokafka_security(s)
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)
    wrong = settings(monkeypatch, RETENTION_KAFKA_SSL_KEY_PASSWORD="wrong")
    with pytest.raises(ssl.SSLError):  # the key is really loaded with the password
        kafka.aiokafka_security(wrong)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RETENTION_KAFKA_SASL_MECHANISM": "PLAIN"}, "RETENTION_KAFKA_SASL_MECHANISM set but RETENTION_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
        ({"RETENTION_KAFKA_SECURITY_PROTOCOL": "SSL", "RETENTION_KAFKA_SASL_PASSWORD": "x"}, "RETENTION_KAFKA_SASL_PASSWORD set but RETENTION_KAFKA_SECURITY_PROTOCOL is SSL"),
        ({"RETENTION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_SSL: set RETENTION_KAFKA_SASL_MECHANISM"),
        ({"RETENTION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RETENTION_KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "'OAUTHBEARER' is not supported"),
        ({"RETENTION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RETENTION_KAFKA_SASL_MECHANISM": "PLAIN", "RETENTION_KAFKA_SASL_USERNAME": "u"},
         "needs RETENTION_KAFKA_SASL_USERNAME and RETENTION_KAFKA_SASL_PASSWORD"),
        ({"RETENTION_KAFKA_SSL_CAFILE": "{cert}"}, "RETENTION_KAFKA_SSL_CAFILE set but RETENTION_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
        ({"RETENTION_KAFKA_SECURITY_PROTOCOL": "SSL", "RETENTION_KAFKA_SSL_CERTFILE": "{cert}"}, "RETENTION_KAFKA_SSL_CERTFILE and RETENTION_KAFKA_SSL_KEYFILE go together"),
        ({"RETENTION_KAFKA_SECURITY_PROTOCOL": "SSL", "RETENTION_KAFKA_SSL_KEY_PASSWORD": "x"}, "RETENTION_KAFKA_SSL_KEY_PASSWORD set without RETENTION_KAFKA_SSL_KEYFILE"),
        ({"RETENTION_KAFKA_SECURITY_PROTOCOL": "SSL", "RETENTION_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "RETENTION_KAFKA_SSL_CAFILE: no readable file /nonexistent/ca.pem"),
        ({"RETENTION_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol"),
    ],
)
def test_inconsistent_security_settings_are_refused_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as error:
        settings(monkeypatch, **{k: v.format(cert=pki["cert"]) for k, v in env.items()})
    assert "s3cret" not in str(error.value) and "'x'" not in str(error.value)  # secrets stay out of the error


def test_every_confluent_client_gets_the_security_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[str, dict[str, Any]]] = []
    for name in ("Producer", "Consumer", "AdminClient"):
        monkeypatch.setattr(kafka, name, lambda config, name=name: built.append((name, config)))
    s = settings(monkeypatch, RETENTION_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", **SCRAM)
    kafka.admin(s), kafka.producer(s), kafka.consumer(s, "g")
    assert [name for name, _ in built] == ["AdminClient", "Producer", "Consumer"]
    for _, config in built:
        assert {k: config[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password")} == {
            "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc", "sasl.password": "s3cret"}


def test_every_aiokafka_client_of_the_worker_gets_the_security_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Faust's producer and consumer (through ``broker_credentials``) and our snapshot reader."""
    from streams.runtime.app import create_app

    s = settings(monkeypatch, RETENTION_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", RETENTION_DATA_DIR=str(tmp_path),
                 RETENTION_SNAPSHOT_KEY="k" * 64, **SCRAM)  # (a worker needs its model snapshot key)

    async def clients() -> list[Any]:
        app, ingest = create_app(s)
        built = [app.producer._new_producer(), app.consumer._thread._create_worker_consumer(app.consumer.transport),
                 ingest.follower.new_consumer()]
        for client in built:
            await client.stop()
        return built

    for client in asyncio.run(clients()):
        connection = client.client if hasattr(client, "client") else client._client  # producer / consumer
        assert (connection._security_protocol, connection._sasl_mechanism, connection._sasl_plain_username,
                connection._sasl_plain_password) == ("SASL_PLAINTEXT", "SCRAM-SHA-512", "svc", "s3cret")


#: Kafka client classes: building one outside kafka.py and model_sync.py would bypass the security settings.
CLIENT = re.compile(r"\b(Producer|Consumer|AdminClient|AIOKafka\w*)\(")


def test_no_kafka_client_is_built_outside_the_functions_that_add_the_security_settings() -> None:
    sites = []
    for path in sorted([*ROOT.glob("streams/**/*.py"), *ROOT.glob("models/**/*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if CLIENT.search(line) and not line.lstrip().startswith(("#", "class ", "def ")):
                sites.append((str(path.relative_to(ROOT)), line.strip()))
    assert sites == [
        ("streams/runtime/broker.py", 'admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})'),  # the embedded broker: PLAINTEXT on loopback
        ("streams/runtime/kafka.py", "return AdminClient(confluent_config(settings, **extra))"),
        ("streams/runtime/kafka.py", "return Producer(confluent_config("),
        ("streams/runtime/kafka.py", "return Consumer(confluent_config("),
        ("streams/runtime/model_sync.py", "return AIOKafkaConsumer("),
    ]
    follower = (ROOT / "streams/runtime/model_sync.py").read_text()
    assert "fetch_max_bytes=self.settings.model_snapshot_max_bytes, **aiokafka_security(self.settings)," in follower
