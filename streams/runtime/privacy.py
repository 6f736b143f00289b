"""The batched hot path's privacy hooks: pseudonyms at the edge, erasure requests, the erased-ids set.

:class:`Privacy` is called by :class:`~streams.runtime.agents.batched.BatchIngest` on its
fold thread: to decode the records of its own topics (:meth:`Privacy.decoder`), for an
erasure request released from a partition's merge (:meth:`Privacy.erase`), for a user event
or consent once it is known to belong to the partition (:meth:`Privacy.edge`: pseudonym,
erased-ids set, key rotation; then :meth:`Privacy.consent`), for each action sent
(:meth:`Privacy.action_value`: the shop's id where allowed) and for a ``GET /users/{id}``
(:meth:`Privacy.key_of`). The rules themselves are pure (:mod:`streams.domain.privacy`).

An erasure is a state write like any other: the user's state is deleted (a tombstone in
RocksDB and on the changelog), the erased-ids entry written, the user-scores row
tombstoned, the trainer told (``Forget`` on model-labels) and the confirmation sent, all in
the batch that released the request; its offset is committed only once all of them are
acknowledged (:mod:`streams.runtime.deliveries`), so a crash before the confirmation makes
the next owner erase and confirm again (the entry keeps what was removed: the repeat says
the same).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from confluent_kafka import Message
from confluent_kafka.admin import NewTopic

from models.examples import Forget
from streams.domain.actions import RetentionAction, encode_action
from streams.domain.events import Invalid, Outcome
from streams.domain.population import rfm_of
from streams.domain.privacy import (
    KEPT, ConsentChange, ErasedEntry, ErasureConfirmation, ErasureRequest, Pseudonyms, apply_consent, decode_consent,
    decode_erasure, dump_entry, encode_confirmation, expired, is_pseudonym, load_entry, removed_from,
)
from streams.domain.state import UserState
from streams.domain.timestamps import MS_PER_DAY, format_ts
from streams.runtime import metrics
from streams.runtime.kafka import admin, create_new_topics
from streams.runtime.partitioning import murmur2_words
from streams.runtime.settings import Settings

if TYPE_CHECKING:
    from streams.runtime.agents.batched import BatchIngest, PartitionWork
    from streams.runtime.user_store import PartitionStore

log = logging.getLogger(__name__)

#: Logical names of the topics of this module (the contract's).
ERASURE_REQUESTS = "erasure-requests"
CONSENTS = "consents"
#: Customers whose pseudonyms a worker remembers (shop id -> pseudonyms), so each costs its HMAC and routing once.
CACHE = 262_144


def create_privacy_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create consents, erasure-requests and erasure-confirmations unless they exist (a
    deployment whose topics were created before them: the event-time merge must be able to
    see those inputs caught up, or it would wait for them)."""
    client = admin(settings)
    existing = client.list_topics(timeout=timeout).topics
    wanted = [NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication_factor,
                       config=settings.topic_config(name))
              for name in (settings.topic_consents, settings.topic_erasure_requests, settings.topic_erasure_confirmations)
              if name not in existing]
    return create_new_topics(client, wanted, timeout) if wanted else []


def _wall_ms() -> int:
    return int(time.time() * 1000)


class Privacy:
    """Pseudonyms, erasures and the erased-ids set of one worker's batched ingest."""

    def __init__(self, ingest: BatchIngest) -> None:
        self.ingest = ingest
        settings = ingest.settings
        self.settings = settings
        partitions = settings.partitions
        keys = settings.pseudonym_keys
        self.names = None if not keys else Pseudonyms(
            keys[0], keys[1:], route=lambda s: (murmur2_words(s.encode()) & 0x7FFFFFFF) % partitions)
        self.cache: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self.keep_ms = int(settings.erased_ids_retention_days * MS_PER_DAY)
        self.topic = settings.topic_erasure_requests
        self.shop_ids = self.names is not None and settings.actions_include_user_id

    # ------------------------------------------------------------------ ids

    def pseudonym(self, user_id: str) -> str:
        """The id the user's data is kept under: the pseudonym (the id itself when
        pseudonymisation is off, or when it already is one)."""
        return self.pseudonyms(user_id)[0]

    def pseudonyms(self, user_id: str) -> tuple[str, ...]:
        """The current key's pseudonym of ``user_id``, then the previous keys' (remembered)."""
        if self.names is None or is_pseudonym(user_id):
            return (user_id,)
        found = self.cache.get(user_id)
        if found is None:
            found = self.cache[user_id] = tuple(self.names.all_of(user_id))
            if len(self.cache) > CACHE:
                self.cache.popitem(last=False)
        return found

    def key_of(self, user_id: str, store: PartitionStore | None = None) -> str:
        """The state key of a ``GET /users/{id}`` (the shop's id or a pseudonym): with a
        ``store``, a previous key's pseudonym that still holds the state (not seen since a rotation)."""
        names = self.pseudonyms(user_id)
        if store is not None and len(names) > 1 and store.get(names[0]) is None:
            return next((p for p in names[1:] if store.get(p) is not None), names[0])
        return names[0]

    def decoder(self, logical: str) -> Callable[[bytes | None, int], Any] | None:
        """The decoder of a topic of this module (None: an event topic): ``(value, not_after_ms)``."""
        limit = self.settings.max_record_bytes
        if logical == ERASURE_REQUESTS:
            return lambda raw, not_after_ms: decode_erasure(raw, limit)
        if logical == CONSENTS:
            return lambda raw, not_after_ms: decode_consent(raw, not_after_ms, limit)
        return None

    def consent(self, work: PartitionWork, change: ConsentChange) -> None:
        """A customer's marketing permissions (already pseudonymised by :meth:`edge`), kept
        in their state for the guard rails."""
        # (a statement is not shopping: first and last seen stay those of the customer's events)
        state = work.store.get(change.user_id) or UserState(change.user_id)
        if apply_consent(state, change):
            work.store.put(state)
        metrics.count_record(CONSENTS, "ok")

    # ------------------------------------------------------------------ ingest

    def edge(self, work: PartitionWork, topic: str, event: Any) -> Any | None:
        """The event as it is folded (its user_id the pseudonym), or None if its customer
        is erased (counted as ``erased``; not folded, not dead-lettered: a dead letter
        would copy the erased customer's record to another topic)."""
        if self.names is None or (isinstance(event, Outcome) and is_pseudonym(event.user_id)):
            # (an outcome from a marketing system names the customer by the pseudonym it was sent)
            if self._erased(work, event.user_id):
                metrics.count_record(topic, "erased")
                return None
            return event
        names = self.pseudonyms(event.user_id)
        if any(self._erased(work, p) for p in names):  # (every key's: an erasure before a rotation holds after it)
            metrics.count_record(topic, "erased")
            return None
        if len(names) > 1 and work.store.get(names[0]) is None:
            self._rotate(work, names)
        if self.shop_ids and work.store.shop_id(names[0]) != event.user_id:
            work.store.set_shop_id(names[0], event.user_id)  # (the operator lets actions carry it)
        return msgspec.structs.replace(event, user_id=names[0])

    def action_value(self, work: PartitionWork, action: RetentionAction) -> bytes:
        """The action as published: with ``shop_user_id`` when the operator allows it
        (RETENTION_ACTIONS_INCLUDE_USER_ID) and the worker knows it."""
        value = encode_action(action)
        shop_id = work.store.shop_id(action.user_id) if self.shop_ids else None
        if shop_id is None:
            return value
        return value[:-1] + b',"shop_user_id":' + msgspec.json.encode(shop_id) + b"}"

    def _erased(self, work: PartitionWork, key: str) -> bool:
        raw = work.store.erased(key)
        if raw is None:
            return False
        if expired(load_entry(raw), _wall_ms(), self.keep_ms):
            work.store.set_erased(key, None)  # its retention is over: tombstoned like a state
            return False
        return True

    def _rotate(self, work: PartitionWork, names: tuple[str, ...]) -> None:
        """Key rotation: a state kept under a previous key's pseudonym moves to the current
        one at the customer's next event (the same partition: every pseudonym is routed like
        the shop's id); the old key's state and user-scores row are tombstoned."""
        new = names[0]
        for old in names[1:]:
            state = work.store.get(old)
            if state is None:
                continue
            due = work.queue.due(old)
            work.store.delete(old)
            work.store.set_shop_id(old, None)
            work.queue.schedule(old, None)
            self.ingest.loyalty_ranks.forget(old)
            self.ingest._emit(self.settings.topic_scores, old.encode(), None)
            state.user_id = new
            work.store.put(state)
            work.queue.schedule(new, due)
            metrics.PSEUDONYMS_ROTATED.inc()
            return

    def purge(self, work: PartitionWork) -> int:
        """Expired entries of a partition's erased-ids set, tombstoned (at assignment)."""
        now = _wall_ms()
        gone = [k for k, raw in work.store.erased_entries().items() if expired(load_entry(raw), now, self.keep_ms)]
        for key in gone:
            work.store.set_erased(key, None)
        return len(gone)

    # ------------------------------------------------------------------ erasure

    def erase(self, work: PartitionWork, msg: Message, request: ErasureRequest) -> None:
        """Forget the customer the request names, on the partition that owns them."""
        ingest = self.ingest
        owner = ingest.partition_for(request.subject)
        if owner != work.partition:  # mis-keyed: on to the owner's partition of erasure-requests
            metrics.count_record(ERASURE_REQUESTS, "rekeyed")
            ingest._emit(self.topic, request.subject.encode(), msg.value(), partition=owner)
            return
        keys = self._keys(request)
        now = _wall_ms()
        removed: dict[str, int] = {}
        first: ErasedEntry | None = None
        for key in keys:
            raw = work.store.erased(key)
            if raw is not None and first is None:
                first = load_entry(raw)
            for name, count in self._forget(work, key).items():
                removed[name] = removed.get(name, 0) + count
        repeated = first is not None
        entry = first if first is not None else ErasedEntry(request.request_id, now, removed)
        for key in keys:  # (again on a repeat: the changelog may not have the first write)
            work.store.set_erased(key, dump_entry(entry))
        if request.user_id is not None and request.user_id not in keys:  # rows published before pseudonyms
            ingest._emit(self.settings.topic_scores, request.user_id.encode(), None)
        self.cache.pop(request.user_id or "", None)
        ingest.partition_for.cache_clear()  # (it remembers raw ids)
        metrics.count_record(ERASURE_REQUESTS, "repeated" if repeated else "ok")
        confirmation = ErasureConfirmation(
            request_id=request.request_id, subject=keys[0], pseudonymized=self.names is not None,
            found=entry.removed.get("state", 0) > 0, repeated=repeated, partition=work.partition,
            requested_at=format_ts(request.requested_at), erased_at=format_ts(entry.erased_at),
            erased_until=format_ts(entry.erased_at + self.keep_ms), removed=dict(entry.removed), kept=list(KEPT),
        )
        ingest._emit(self.settings.topic_erasure_confirmations, request.request_id.encode(), encode_confirmation(confirmation))
        log.info("erasure request %s: a customer of partition %d erased (%s)%s", request.request_id, work.partition,
                 ", ".join(f"{k} {v}" for k, v in sorted(entry.removed.items())), " again" if repeated else "")

    def _keys(self, request: ErasureRequest) -> list[str]:
        """Every id the customer's data may be kept under on this partition."""
        if request.pseudonym is not None:
            return [request.pseudonym]
        assert request.user_id is not None
        if self.names is None:
            return [request.user_id]
        return self.names.all_of(request.user_id)

    def _forget(self, work: PartitionWork, key: str) -> dict[str, int]:
        """Delete what the worker keeps of ``key``: its state (tombstoned), its place in the
        due schedule, the RFM population and the loyalty ranking, its user-scores row
        (tombstoned) and its trainer examples not learned yet."""
        ingest = self.ingest
        state = work.store.get(key)
        removed = removed_from(state)
        work.store.set_shop_id(key, None)
        if state is not None:
            work.store.delete(key)
            ingest.population.update(rfm_of(state), None)
            removed["rfm_population"] = int(rfm_of(state) is not None)
        removed["due_schedule"] = int(work.queue.due(key) is not None)
        work.queue.schedule(key, None)
        removed["loyalty_ranking"] = int(ingest.loyalty_ranks.forget(key))
        work.rewritten.discard(key)
        if state is not None:
            ingest._emit(self.settings.topic_scores, key.encode(), None)  # compacted away: exports no longer have it
            removed["user_scores_rows"] = 1
            ingest._label(Forget(user=key))
            removed["trainer_notified"] = 1
        return removed
