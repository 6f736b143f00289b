"""The Kafka security settings on real connections: TLS (RETENTION_KAFKA_SECURITY_PROTOCOL=SSL
with a private CA) end to end, through every client of ours and Faust's, and mutual TLS.

The embedded broker cannot serve TLS itself: Tansu 0.6.0's command line puts ``--cert`` and
``--key`` in one exclusive group ("the argument '--cert <CERT>' cannot be used with
'--key <KEY>'"), and it builds its TLS configuration only when both are given, so with one
of them it listens in plaintext. The tests therefore put a TLS terminator in front of it (as
stunnel or a load balancer does in front of Kafka): it holds a server certificate for
127.0.0.1 signed by a CA made here, relays each connection's bytes to the broker's plaintext
port, and the broker advertises the terminator's port, so every connection of every client
(librdkafka's admin and producer, Faust's aiokafka consumer and producer, the model
follower's aiokafka consumer) goes through TLS.

SASL is not tested on the embedded broker: with ``--authentication`` Tansu offers SCRAM only
(PLAIN: "NoSharedMechanism"), and a SCRAM user can only be created over an authenticated
connection (AlterUserScramCredentials and ``tansu user create`` are answered
NotAuthenticated), while its memory-only storage loses users created before a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.runtime.broker import EmbeddedBroker, free_port
from streams.runtime.kafka import BrokersUnreachable, admin, aiokafka_security, check_brokers
from streams.runtime.settings import Settings, embedded_overrides
from tests.integration.conftest import fresh_env, new_pipeline, settings_of
from tests.integration.test_faults import purchases, send
from tests.integration.test_operations import eventually
from tests.integration.test_pipeline import T0

pytestmark = pytest.mark.integration

MS_PER_DAY = 86_400_000


def make_pki(tmp: Path) -> dict[str, Path]:
    """A CA, and the certificates it signs (the openssl CLI): ``cert`` for 127.0.0.1 and
    localhost, ``elsewhere`` for another host name, each with its key, and ``client`` with
    its encrypted key."""
    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp / "ca.key", "-out", tmp / "ca.pem", "-days", "1",
            "-subj", "/CN=retention-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, names in (("cert", "IP:127.0.0.1,DNS:localhost"), ("elsewhere", "DNS:kafka.elsewhere.test")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp / f"{name}.key", "-out", tmp / f"{name}.csr",
                "-subj", f"/CN={names.split(':')[-1]}")
        (tmp / f"{name}.ext").write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
                                         "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", tmp / f"{name}.csr", "-CA", tmp / "ca.pem", "-CAkey", tmp / "ca.key", "-CAcreateserial",
                "-out", tmp / f"{name}.pem", "-days", "1", "-extfile", tmp / f"{name}.ext")
    # a client certificate for mutual TLS, its key encrypted (PKCS#8) with the password "keypw"
    openssl("req", "-newkey", "rsa:2048", "-passout", "pass:keypw", "-keyout", tmp / "client.key", "-out", tmp / "client.csr",
            "-subj", "/CN=retention-worker")
    (tmp / "client.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", tmp / "client.csr", "-CA", tmp / "ca.pem", "-CAkey", tmp / "ca.key", "-CAcreateserial",
            "-out", tmp / "client.pem", "-days", "1", "-extfile", tmp / "client.ext")
    return {"ca": tmp / "ca.pem", "cert": tmp / "cert.pem", "key": tmp / "cert.key",
            "elsewhere": tmp / "elsewhere.pem", "elsewhere_key": tmp / "elsewhere.key",
            "client": tmp / "client.pem", "client_key": tmp / "client.key"}


class TlsTerminator:
    """Accepts TLS connections on a loopback port (its own event loop, in a thread) and
    relays each one's bytes to the broker's plaintext port. ``connections``: TLS sessions
    set up (a connection whose handshake fails never gets here). With ``client_ca``, only
    clients with a certificate that CA signed are let in (mutual TLS)."""

    def __init__(self, upstream_port: int, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tls-terminator", daemon=True)
        self.server: asyncio.Server | None = None

    def start(self) -> "TlsTerminator":
        self.thread.start()
        start = asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(timeout=10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.loop.close()

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_in, broker_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_out.close()
            return
        await asyncio.gather(self._pipe(client_in, broker_out), self._pipe(broker_in, client_out))

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(1 << 16):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[TlsTerminator, dict[str, Path]]]:
    """The embedded broker behind a TLS terminator: only the terminator's port is advertised.
    Both are stopped at the end (the broker by its PID)."""
    pki = make_pki(tmp_path)
    plain_port = free_port()
    terminator = TlsTerminator(plain_port, pki["cert"], pki["key"]).start()
    broker = EmbeddedBroker(plain_port, log_file=tmp_path / "broker.log", advertised_port=terminator.port)
    try:
        broker.start()
        yield terminator, pki
    finally:
        broker.stop()
        terminator.stop()


def tls_env(terminator: TlsTerminator, **security: str) -> dict[str, str]:
    return {**embedded_overrides(f"127.0.0.1:{terminator.port}"), "RETENTION_KAFKA_SECURITY_PROTOCOL": "SSL", **security}


def test_a_worker_over_tls_processes_what_the_publisher_sends_over_tls(tls_broker: tuple[TlsTerminator, dict[str, Path]],
                                                                       tmp_path: Path) -> None:
    terminator, pki = tls_broker
    with new_pipeline(tls_env(terminator, RETENTION_KAFKA_SSL_CAFILE=str(pki["ca"])), tmp_path) as pipe:  # topics: librdkafka admin
        sent = send(pipe.settings, purchases(users=40, per_user=3))  # librdkafka producer: days 0, 1 and 2
        worker = pipe.worker()  # Faust's aiokafka clients and the model follower's
        worker.wait_ready(timeout=90)
        worker.wait_processed(sent, timeout=120)

        assert worker.total("retention_records_total", topic="purchases", result="ok") == sent
        status, profile = worker.get_json("/users/u7")
        assert status == 200 and profile["features"]["purchases"] == 3, profile
        # the trainer's snapshot (Faust's producer) read back by the model follower (its own aiokafka consumer)
        snapshot = eventually(lambda: (s := worker.get_json("/models")[1]["snapshot"])["covered"] and s, timeout=90,
                              what="a model snapshot read by the follower")
        assert snapshot["covered"] >= T0 + MS_PER_DAY, snapshot
    assert terminator.connections >= 4


def test_clients_without_the_ca_or_without_tls_or_for_another_host_are_refused(
        tls_broker: tuple[TlsTerminator, dict[str, Path]]) -> None:
    terminator, pki = tls_broker
    system_cas = settings_of(fresh_env(tls_env(terminator)))  # SSL, no RETENTION_KAFKA_SSL_CAFILE: the system's CAs
    with pytest.raises(BrokersUnreachable, match="certificate verify failed"):
        check_brokers(system_cas, timeout=5)
    assert not aiokafka_connects(system_cas)  # the worker's clients refuse it too
    plaintext = settings_of(fresh_env(tls_env(terminator, RETENTION_KAFKA_SECURITY_PROTOCOL="PLAINTEXT")))
    with pytest.raises(BrokersUnreachable):
        check_brokers(plaintext, timeout=5)
    assert terminator.connections == 0  # none of them set up a TLS session

    # the CA's certificate for another host name, on a second terminator in front of the same broker: host names are checked
    elsewhere = TlsTerminator(terminator.upstream_port, pki["elsewhere"], pki["elsewhere_key"]).start()
    try:
        misnamed = settings_of(fresh_env({**tls_env(elsewhere), "RETENTION_KAFKA_SSL_CAFILE": str(pki["ca"])}))
        with pytest.raises(BrokersUnreachable, match="certificate verify failed"):
            check_brokers(misnamed, timeout=5)
        assert not aiokafka_connects(misnamed)
        assert elsewhere.connections == 0
        unchecked = admin(misnamed, **{"ssl.endpoint.identification.algorithm": "none"})  # only the name is wrong:
        assert unchecked.list_topics(timeout=30).brokers and elsewhere.connections >= 1  # without the check, it answers
    finally:
        elsewhere.stop()

    trusted = settings_of(fresh_env(tls_env(terminator, RETENTION_KAFKA_SSL_CAFILE=str(pki["ca"]))))
    check_brokers(trusted, timeout=30)  # the same broker, with the CA and its own name: answers
    assert aiokafka_connects(trusted)
    assert terminator.connections >= 2


def test_mutual_tls_with_an_encrypted_client_key(tls_broker: tuple[TlsTerminator, dict[str, Path]]) -> None:
    terminator, pki = tls_broker
    mutual = TlsTerminator(terminator.upstream_port, pki["cert"], pki["key"], client_ca=pki["ca"]).start()
    try:
        server_only = settings_of(fresh_env(tls_env(mutual, RETENTION_KAFKA_SSL_CAFILE=str(pki["ca"]))))
        with pytest.raises(BrokersUnreachable):
            check_brokers(server_only, timeout=5)
        assert not aiokafka_connects(server_only)
        assert mutual.connections == 0  # no client certificate: no TLS session

        client = settings_of(fresh_env(tls_env(
            mutual, RETENTION_KAFKA_SSL_CAFILE=str(pki["ca"]), RETENTION_KAFKA_SSL_CERTFILE=str(pki["client"]),
            RETENTION_KAFKA_SSL_KEYFILE=str(pki["client_key"]), RETENTION_KAFKA_SSL_KEY_PASSWORD="keypw")))
        check_brokers(client, timeout=30)
        assert aiokafka_connects(client)
        assert mutual.connections >= 2
    finally:
        mutual.stop()


def aiokafka_connects(settings: Settings) -> bool:
    """Whether aiokafka's client (under Faust's consumer and producer and the model follower's
    consumer), with the worker's security settings, gets the cluster's metadata."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaConnectionError

    async def connect() -> bool:
        client = AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=5000,
                                **aiokafka_security(settings))
        try:
            await client.bootstrap()
        except KafkaConnectionError:
            return False
        finally:
            await client.close()
        return True

    return asyncio.run(connect())
