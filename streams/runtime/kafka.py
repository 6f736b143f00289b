"""Kafka clients: confluent-kafka ones for the command-line side (topic admin, producers,
consumers), and the connection security of every client, ours and Faust's.

Every client connects through :func:`confluent_config` (librdkafka) or
:func:`faust_credentials` / :func:`aiokafka_security` (Faust's aiokafka clients and the
worker's own snapshot reader), so the ``RETENTION_KAFKA_*`` security settings reach all of
them; a unit test checks that no client is built elsewhere.

The command-line clients route librdkafka's own log lines through Python logging, each
kind of line at most once a minute (:class:`OncePerMinute`): without it, a client whose
broker is down prints every refused connection attempt. Commands check the brokers first
(:func:`check_brokers`) and, when none answers, say so in one line.

Producers use the ``murmur2_random`` partitioner, the Java client's (and Faust's)
partitioner, so a record keyed by user_id lands on the same partition whichever of our
tools wrote it. Records from producers with another partitioner are still routed to
the right partition by the worker (see ``streams.runtime.partitioning``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import ssl
from collections.abc import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from typing import TYPE_CHECKING

from pydantic import SecretStr

from streams.runtime.settings import Settings

if TYPE_CHECKING:
    from faust.auth import Credentials

log = logging.getLogger(__name__)


def confluent_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration of a client of ``settings``' cluster: bootstrap servers, the
    security settings, then ``extra`` (the client's own options)."""
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers, "security.protocol": settings.kafka_security_protocol}
    optional = {
        "ssl.ca.location": settings.kafka_ssl_cafile,
        "ssl.certificate.location": settings.kafka_ssl_certfile,
        "ssl.key.location": settings.kafka_ssl_keyfile,
        "ssl.key.password": settings.kafka_ssl_key_password,
        "sasl.mechanism": settings.kafka_sasl_mechanism,
        "sasl.username": settings.kafka_sasl_username,
        "sasl.password": settings.kafka_sasl_password,
    }
    for key, value in optional.items():
        if value is not None:
            config[key] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return {**config, **extra}


def faust_credentials(settings: Settings) -> Credentials | None:
    """Faust's ``broker_credentials`` for the security settings (None: PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials  # faust only where needed: commands start faster

    protocol = settings.kafka_security_protocol
    context = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        return SASLCredentials(
            username=settings.kafka_sasl_username, password=password.get_secret_value() if password else None,
            ssl_context=context, mechanism=settings.kafka_sasl_mechanism,
        )
    return SSLCredentials(context) if context is not None else None


def aiokafka_security(settings: Settings) -> Mapping[str, Any]:
    """Keyword arguments of an aiokafka client: the same translation Faust applies to its own."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    return credentials_to_aiokafka_auth(faust_credentials(settings))


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of aiokafka: the CA file (else the system's CAs), hostname checks,
    and the client certificate if one is set."""
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile is not None:
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile, password.get_secret_value() if password else None
        )
    return context


class OncePerMinute(logging.Filter):
    """Lets one librdkafka log line of each kind through per minute (a kind: the line with
    its numbers blanked, so "Connect to ... failed (after 0ms ...)" is one kind)."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        if now - self.seen.get(kind, -self.every_s) < self.every_s:
            return False
        if len(self.seen) > 1000:  # bounded: forget the oldest kinds
            self.seen = dict(sorted(self.seen.items(), key=lambda kv: kv[1])[500:])
        self.seen[kind] = now
        return True


#: Where the clients built here send librdkafka's log lines (instead of stderr, unfiltered).
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
LIBRDKAFKA_LOG.addFilter(OncePerMinute())


class BrokersUnreachable(RuntimeError):
    """No broker of KAFKA_BOOTSTRAP_SERVERS answered; the message is the one line to print."""


#: librdkafka errors that say no broker is there now (refused, unknown host), as opposed to a slow answer.
_DOWN = {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._TRANSPORT}


def check_brokers(settings: Settings, timeout: float | None = None, give_up_down_s: float = 3.0) -> None:
    """Return once a broker answers a metadata request; raise :class:`BrokersUnreachable`
    after ``timeout`` (RETENTION_CONNECT_TIMEOUT_S), or after ``give_up_down_s`` of refused
    connections or unresolvable hosts, with why and what to do, in one line."""
    timeout = settings.connect_timeout_s if timeout is None else timeout
    errors: list[KafkaError] = []
    client = admin(settings, log_level=0, error_cb=errors.append)
    started = time.monotonic()
    while True:
        try:
            client.list_topics(timeout=min(1.0, timeout))
            return
        except KafkaException as exc:
            errors.append(exc.args[0])
        client.poll(0)  # serves error_cb: the connection errors say why
        waited = time.monotonic() - started
        down = any(e.code() in _DOWN for e in errors)
        if waited >= timeout or (down and waited >= min(give_up_down_s, timeout)):
            break
    reasons = [e.str() for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN and "Failed to get metadata" not in e.str()]
    reason = reasons[-1] if reasons else errors[-1].str()
    raise BrokersUnreachable(
        f"cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} ({reason}; gave up after {waited:.0f} s): "
        "set KAFKA_BOOTSTRAP_SERVERS, or run `retention broker` in another shell and export the settings it prints"
    )


def admin(settings: Settings, **extra: Any) -> AdminClient:
    extra = {"logger": LIBRDKAFKA_LOG, **extra}
    return AdminClient(confluent_config(settings, **extra))


def create_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create every topic the system uses, with its final partition count (the two model
    topics have one partition). Idempotent.

    Returns the topics that were created (existing ones are left as they are, after
    checking that their partition count matches: inputs must be co-partitioned).
    """
    client = admin(settings)
    existing = client.list_topics(timeout=timeout).topics
    for name in settings.all_topics:
        if name in existing and len(existing[name].partitions) != settings.partitions:
            raise RuntimeError(
                f"topic {name!r} has {len(existing[name].partitions)} partitions, "
                f"RETENTION_PARTITIONS is {settings.partitions}: all topics must be co-partitioned"
            )
    wanted = [
        NewTopic(
            name,
            num_partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            config=settings.topic_config(name),
        )
        for name in settings.all_topics
        if name not in existing
    ]
    wanted += [  # internal, one partition each (docs/models.md)
        NewTopic(name, num_partitions=1, replication_factor=settings.replication_factor, config=config)
        for name, config in ((settings.topic_model_labels, {}), (settings.topic_model_snapshots, settings.topic_config(settings.topic_model_snapshots)))
        if name not in existing
    ]
    if not wanted:
        return []
    return create_new_topics(client, wanted, timeout)


#: Topic settings a broker may not know (Kafka before 2.3, some Kafka-compatible brokers):
#: a topic refused with one of them is created without it, and a warning says so.
OPTIONAL_TOPIC_CONFIGS = ("max.compaction.lag.ms",)


def create_new_topics(client: AdminClient, wanted: list[NewTopic], timeout: float) -> list[str]:
    """Create ``wanted`` (existing ones are skipped); the names created."""
    created = []
    retry = []
    by_name = {t.topic: t for t in wanted}
    for name, future in client.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            topic = by_name[name]
            optional = [k for k in OPTIONAL_TOPIC_CONFIGS if k in (topic.config or {})]
            if not optional:
                raise
            log.warning("topic %s: the broker refused it with %s (%s); creating it without (compaction of erased "
                        "customers' records then follows the broker's own schedule)", name, ", ".join(optional), exc.args[0].str())
            retry.append(NewTopic(name, num_partitions=topic.num_partitions, replication_factor=topic.replication_factor,
                                  config={k: v for k, v in topic.config.items() if k not in optional}))
    if retry:
        created += create_new_topics(client, retry, timeout)
    return created


def producer(settings: Settings, **overrides: Any) -> Producer:
    return Producer(confluent_config(
        settings, **{"partitioner": "murmur2_random", "enable.idempotence": True, "linger.ms": 20, "compression.type": "lz4",
                   "logger": LIBRDKAFKA_LOG, **overrides}
    ))


def consumer(settings: Settings, group_id: str | None, **overrides: Any) -> Consumer:
    """A consumer; with ``group_id=None`` it uses a throw-away group and never commits."""
    return Consumer(confluent_config(
        settings,
        **{
            "group.id": group_id or f"retention-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": group_id is not None,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000),
            "fetch.wait.max.ms": settings.fetch_max_wait_ms,
            "logger": LIBRDKAFKA_LOG,
            **overrides,
        },
    ))


def messages(consumer_: Consumer, poll_s: float = 0.2) -> Iterator[Message | None]:
    """Messages as they arrive; yields None when a poll times out (so callers can stop)."""
    while True:
        msg = consumer_.poll(poll_s)
        if msg is None:
            yield None
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise KafkaException(msg.error())
        yield msg


def read_topic(settings: Settings, topic: str, idle_s: float = 2.0, at_least: int = 0, timeout: float = 60.0) -> list[Message]:
    """Records of a topic from the beginning: at least ``at_least`` of them (or until
    ``timeout``), then on until the topic stays idle for ``idle_s``."""
    reader = consumer(settings, None)
    reader.subscribe([topic])
    out: list[Message] = []
    start = last = time.monotonic()
    try:
        for msg in messages(reader):
            now = time.monotonic()
            if msg is not None:
                last = now
                out.append(msg)
            elif now - start > timeout or (len(out) >= at_least and now - last > idle_s):
                return out
    finally:
        reader.close()
    return out


def read_to_end(settings: Settings, topic: str, timeout: float = 120.0) -> Iterator[Message]:
    """Every record of ``topic`` up to its end as of now (the high watermarks read at the
    start), partition by partition in offset order."""
    reader = consumer(settings, None, **{"enable.partition.eof": True})
    try:
        partitions = reader.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)[1] for p in partitions}
        todo = {p for p, end in ends.items() if end > 0}
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(todo)} not read to their end in {timeout:.0f} s")
            msg = reader.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    todo.discard(msg.partition())
                    continue
                raise KafkaException(msg.error())
            yield msg
            if msg.offset() + 1 >= ends[msg.partition()]:
                todo.discard(msg.partition())
    finally:
        reader.close()



def held_records(settings: Settings, topics: list[str], timeout: float = 10.0) -> dict[str, tuple[int, int]]:
    """Per topic that holds any record: how many it holds (high minus low watermarks) and the
    latest timestamp among its partitions' last records (a missing topic holds none).

    Not ListOffsets by time: the embedded broker (Tansu 0.6.0) answers it with offsets that
    ignore the timestamp asked. Its watermarks under-report a partition's end too (see
    docs/operations.md), so there the count may fall short and the latest timestamp be an
    earlier record's; on Kafka both are exact (the last record's timestamp standing for the
    latest, as producers of event time write in order)."""
    reader = consumer(settings, None, **{"enable.auto.commit": False})
    found: dict[str, tuple[int, int]] = {}
    try:
        metadata = reader.list_topics(timeout=timeout)
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            count, lasts = 0, []
            for p in meta.partitions:
                low, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
                if high > low:
                    count += high - low
                    lasts.append(TopicPartition(topic, p, high - 1))
            if count:
                found[topic] = (count, _latest_timestamp(reader, lasts, timeout))
    finally:
        reader.close()
    return found


def _latest_timestamp(reader: Consumer, lasts: list[TopicPartition], timeout: float) -> int:
    reader.assign(lasts)
    latest, todo = -1, {tp.partition for tp in lasts}
    deadline = time.monotonic() + timeout
    while todo and time.monotonic() < deadline:
        msg = reader.poll(0.5)
        if msg is None or msg.error():
            continue
        latest = max(latest, msg.timestamp()[1])
        todo.discard(msg.partition())
    reader.unassign()
    return latest
