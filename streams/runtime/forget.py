"""``retention forget``: send erasure requests, and wait for their confirmations.

A request is keyed by the id it names (the shop's user id, or a pseudonym), so it reaches
the partition whose owner keeps the customer (``schemas/erasure-requests.v1``); the owner
answers on ``erasure-confirmations``, keyed by ``request_id``. Any producer, in any
language, can send the same records.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from streams.domain.privacy import encode_erasure
from streams.domain.timestamps import format_ts
from streams.runtime.kafka import consumer, producer
from streams.runtime.settings import Settings


def send_requests(settings: Settings, ids: list[str], *, pseudonyms: bool = False, requested_by: str | None = None,
                  timeout: float = 30.0) -> dict[str, str]:
    """One request per id (a fresh request_id each); request_id -> id. Raises RuntimeError
    when a request is not acknowledged."""
    client = producer(settings, **{"message.timeout.ms": int(settings.delivery_timeout_s * 1000)})
    now = format_ts(int(datetime.now(timezone.utc).timestamp() * 1000))
    sent: dict[str, str] = {}
    errors: list[str] = []

    def done(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for user in ids:
        request_id = f"erase-{uuid.uuid4().hex}"
        value = encode_erasure(request_id, now, pseudonym=user, requested_by=requested_by) if pseudonyms else \
            encode_erasure(request_id, now, user_id=user, requested_by=requested_by)
        client.produce(settings.topic_erasure_requests, key=user.encode(), value=value, on_delivery=done)
        sent[request_id] = user
    left = client.flush(timeout)
    if errors or left:
        raise RuntimeError(f"{len(errors) + left} of {len(ids)} erasure requests not acknowledged: {'; '.join(errors[:3])}")
    return sent


def wait_confirmations(settings: Settings, request_ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """The first confirmation of each request found on erasure-confirmations within ``timeout``."""
    topic = settings.topic_erasure_confirmations
    reader = consumer(settings, None)
    found: dict[str, dict[str, Any]] = {}
    try:
        partitions = reader.list_topics(topic, timeout=settings.connect_timeout_s).topics[topic].partitions
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout
        while len(found) < len(request_ids) and time.monotonic() < deadline:
            msg = reader.poll(0.2)
            if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
                continue
            if msg.error():
                raise RuntimeError(str(msg.error()))
            value = json.loads(msg.value())
            if value.get("request_id") in request_ids:
                found.setdefault(value["request_id"], value)
    finally:
        reader.close()
    return found
