"""One consistent model for all workers: a trainer that learns by period of event time,
versioned snapshots, and the choice of snapshot by a record's event time.

Event time is cut into periods of ``period_ms`` (P). Examples (:mod:`models.examples`) are
buffered by the period of their ``at``. Each scoring partition sends a watermark (its
event-time clock) at every period boundary it crosses; once the lowest watermark over
*all* partitions has passed the end of period k, no example of period k can still come,
so :class:`Trainer` learns period k's examples in a fixed order (by ``at``, then ``id``;
an id seen before is dropped) and publishes snapshot S(k+1): the models as of boundary
(k+1)·P, versioned by that boundary. A period without examples changes nothing and gives
only a "covered" marker (no model bytes). The snapshot of a boundary therefore holds
exactly the examples made before it, whatever order they arrived in and however many
workers sent them.

Every record of the topic is signed (:mod:`models.signing`): a record is read only once its
MAC checks out, and its models are unpickled only from the globals a bundle is made of.

A record at event time t is scored by the newest snapshot with boundary at most
``(floor(t / P) - lag) * P`` (:func:`model_boundary`); it waits until the trainer has
covered that boundary (:meth:`SnapshotStore.ready`). Before any snapshot with model bytes,
the fresh models answer (their priors, flagged). A replay of history in event time thus
scores every record with the same models as live traffic, on any number of workers.

>>> from models.examples import ChurnExample
>>> from models.bundle import Models
>>> DAY = 86_400_000
>>> t = Trainer(Models.fresh(), period_ms=DAY, partitions=2)
>>> t.add(ChurnExample(id="u@0/d", at=DAY + 5, features=[1.0], churned=None, days=0))
>>> t.watermark(0, 3 * DAY)  # partition 1 has not said where it is: nothing is learned
[]
>>> [(s.version, s.models is not None) for s in t.watermark(1, 2 * DAY + 1)]
[('1970-01-03', True)]
>>> dict(t.learned), t.covered == 2 * DAY
({'churn': 1}, True)
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from models.examples import Example
from models.signing import UNSIGNED, Refused, SnapshotKeys, check, restricted_loads, sign
from streams.domain.timestamps import MS_PER_DAY, format_ts

#: Format of a snapshot record (``Snapshot.v``): 2 since records are signed (1: unsigned); 3
#: since the models carry the prequential metrics' figures and ``state`` their windows
#: (:class:`models.bundle.TrainerState`; a v2 record reads the same, its models with the windows).
SNAPSHOT_VERSION = 3

log = logging.getLogger(__name__)


class Learner(Protocol):
    def learn(self, example: Any) -> None: ...

    def stamp(self, version: str) -> None: ...


M = TypeVar("M", bound=Learner)


class Snapshot(msgspec.Struct, frozen=True):
    """A record of ``model-snapshots``: the models as of ``boundary`` (``models``: pickled
    bundle), or, without ``models``, a marker that the trainer has covered ``boundary``
    (the models are those of ``model_boundary``). ``marks`` are the partitions' watermarks
    and ``learned``/``dropped`` the trainer's counts, so a restarted trainer resumes here."""

    boundary: int
    version: str
    model_boundary: int | None  #: boundary of the latest snapshot with model bytes (None: priors)
    learned: dict[str, int]
    dropped: dict[str, int]
    marks: dict[int, int]
    models: bytes | None = None
    v: int = SNAPSHOT_VERSION
    #: What only a trainer needs to resume (the models' ``trainer_state``: BG/NBD histories of
    #: every customer and the prequential metrics' windows), apart from ``models``, which every
    #: worker keeps and loads. Added within v2 (older records: None; their ``models`` hold it).
    state: bytes | None = None


class Signed(msgspec.Struct, frozen=True):
    """The record as written (since v2): ``body`` is the encoded :class:`Snapshot`, ``sig`` its
    HMAC, checked before the body is decoded (and so before its models are unpickled)."""

    body: bytes
    sig: bytes
    v: int = SNAPSHOT_VERSION


class _Head(msgspec.Struct):
    """Any version's record, read just far enough to tell which it is (a v1 record is a
    bare :class:`Snapshot`: its other fields are ignored here)."""

    v: int = 1
    body: bytes | None = None
    sig: bytes | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)
_head = msgspec.msgpack.Decoder(_Head)


def encode_snapshot(snapshot: Snapshot, key: bytes) -> bytes:
    """The record of ``snapshot``, signed with ``key``."""
    body = _encoder.encode(snapshot)
    return _encoder.encode(Signed(body=body, sig=sign(key, body)))


def decode_snapshot(raw: bytes, keys: SnapshotKeys) -> Snapshot:
    """The snapshot of a record, or :class:`Refused` (unsigned, signed with a key not in
    ``keys``, unreadable, or of a newer format)."""
    try:
        head = _head.decode(raw)
    except msgspec.DecodeError as exc:
        raise Refused("malformed", f"not a snapshot record ({exc})") from None
    if head.v > SNAPSHOT_VERSION:
        raise Refused("newer_format", f"format v{head.v}; this worker reads up to v{SNAPSHOT_VERSION}")
    if head.v < 2:
        raise Refused("unsigned", UNSIGNED)
    if head.body is None or not head.sig:
        raise Refused("unsigned", f"a v{head.v} record without a signature")
    check(keys, head.body, head.sig)
    try:
        return _decoder.decode(head.body)
    except msgspec.DecodeError as exc:  # signed, so written by a trainer of another version
        raise Refused("malformed", f"signed but not a snapshot ({exc})") from None


def dump_models(models: Any) -> bytes:
    """A snapshot's model bytes: the pickled bundle, compressed, without what only the
    trainer needs (``scoring_only``; that goes in ``Snapshot.state``)."""
    scoring_only = getattr(models, "scoring_only", None)
    with scoring_only() if scoring_only is not None else contextlib.nullcontext():
        return zlib.compress(pickle.dumps(models, protocol=pickle.HIGHEST_PROTOCOL), 1)


def load_models(data: bytes) -> Any:
    """The bundle of a snapshot's model bytes (whose record's signature was checked),
    unpickled with the globals a bundle is made of only; :class:`Refused` if they cannot be
    loaded, so a worker keeps the models it has rather than stopping."""
    try:
        return restricted_loads(zlib.decompress(data))
    except Refused:
        raise
    except Exception as exc:  # zlib.error, UnpicklingError, a class this version lacks...
        raise Refused("malformed", f"model bytes that do not load ({exc!r})") from None


def version_of(boundary: int) -> str:
    """A snapshot's version: its boundary as a date (a timestamp if not at midnight UTC).

    >>> version_of(0), version_of(3_600_000)
    ('1970-01-01', '1970-01-01T01:00:00.000Z')
    """
    text = format_ts(boundary)
    return text[:10] if boundary % MS_PER_DAY == 0 else text


def model_boundary(t: int, period_ms: int, lag: int) -> int:
    """The boundary whose snapshot scores a record at event time ``t``.

    >>> model_boundary(t=10 * 86_400_000 + 7, period_ms=86_400_000, lag=1) // 86_400_000
    9
    """
    return (t // period_ms - lag) * period_ms


class Trainer(Generic[M]):
    """Buffers examples by period; learns a period once every partition's watermark passed it."""

    def __init__(self, models: M, period_ms: int, partitions: int, dumps: Callable[[M], bytes] | None = None) -> None:
        self.models = models
        self.period_ms = period_ms
        self.partitions = partitions
        self.dumps = dumps or dump_models
        self.marks: dict[int, int] = {}
        self.covered: int | None = None  #: every example before this was learned (or dropped)
        self.model_boundary: int | None = None
        self.pending: dict[int, dict[str, Example]] = {}
        self.waiting: set[str] = set()  #: ids of the pending examples
        self.forgot_in_models = False  #: the last forget() dropped something the models held
        self.learned: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        #: why the models the trainer resumed from were refused (it started from fresh ones)
        self.refused: Refused | None = None

    @classmethod
    def resume(cls, snapshots: Iterable[Snapshot], loads: Callable[[bytes], M], fresh: M, period_ms: int, partitions: int) -> Trainer[M]:
        """The trainer where the latest of ``snapshots`` (in publishing order) left it."""
        latest: Snapshot | None = None
        models: bytes | None = None
        state: bytes | None = None
        for s in snapshots:
            latest = s
            if s.models is not None:
                models, state = s.models, s.state
        return cls.resume_from(latest, models, loads, fresh, period_ms, partitions, state=state)

    @classmethod
    def resume_from(
        cls, latest: Snapshot | None, models: bytes | None, loads: Callable[[bytes], M], fresh: M, period_ms: int, partitions: int,
        dumps: Callable[[M], bytes] | None = None, state: bytes | None = None,
    ) -> Trainer[M]:
        """The trainer where the ``latest`` snapshot record left it (``models`` and ``state``:
        the bytes of the latest snapshot with models, that of ``latest.model_boundary``).
        Models that ``loads`` refuses are replaced by ``fresh`` (``refused`` says why): they
        learn again from the examples to come, and the next snapshot replaces the refused one."""
        refused = None
        try:
            start = loads(models) if models is not None else fresh
        except Refused as exc:
            start, refused = fresh, exc
        restore = getattr(start, "restore_trainer_state", None)
        if restore is not None and models is not None and refused is None:
            try:
                restore(state)  # (None: a snapshot without one; the models' metrics start again)
            except Exception as exc:  # (signed: a trainer of another version wrote it) the models stay
                log.error("the trainer's state of snapshot %s does not load (%r): it goes on with the models, "
                          "without the customers' BG/NBD histories, which the examples to come build again, and "
                          "with the prequential metrics started again", latest.version if latest else "-", exc)
        trainer = cls(start, period_ms, partitions, dumps)
        trainer.refused = refused
        if latest is not None:
            trainer.covered = latest.boundary
            trainer.model_boundary = latest.model_boundary
            trainer.marks = dict(latest.marks)
            trainer.learned.update(latest.learned)
            trainer.dropped.update(latest.dropped)
        return trainer

    def add(self, example: Example) -> None:
        """Buffer an example; one of a period already learned, or a copy, is dropped (counted)."""
        if self.covered is not None and example.at < self.covered:
            self.dropped["learned_period"] += 1
            return
        if example.id in self.waiting:  # (a copy made at another time, too)
            self.dropped["duplicate"] += 1
            return
        self.pending.setdefault(example.at // self.period_ms, {})[example.id] = example
        self.waiting.add(example.id)

    def forget(self, user: str) -> int:
        """An erased customer: their examples not learned yet (churn and segment examples,
        ids ``user@time...``; bandit and uplift examples naming them) are dropped, and what the models keep per customer; how many
        records were dropped."""
        dropped = 0
        for period in list(self.pending):
            examples = self.pending[period]
            for example_id in [i for i, e in examples.items() if i.rpartition("@")[0] == user or getattr(e, "user", None) == user]:
                del examples[example_id]
                self.waiting.discard(example_id)
                dropped += 1
            if not examples:
                del self.pending[period]
        #: the models held something of the customer: durable once a snapshot with models follows
        self.forgot_in_models = bool(hasattr(self.models, "forget") and self.models.forget(user))
        dropped += self.forgot_in_models
        if dropped:
            self.dropped["erased"] += dropped
        return dropped

    def low(self) -> int | None:
        """The lowest watermark over all partitions (None while one has sent none)."""
        if len(self.marks) < self.partitions:
            return None
        return min(self.marks.get(p, 0) for p in range(self.partitions))

    def missing(self) -> list[int]:
        """Partitions holding the trainer back: without a watermark, or at the lowest one."""
        absent = [p for p in range(self.partitions) if p not in self.marks]
        if absent:
            return absent
        low = self.low()
        return [p for p in range(self.partitions) if self.marks[p] == low]

    def watermark(self, partition: int, clock_ms: int) -> list[Snapshot]:
        """Partition ``partition`` is at ``clock_ms``: learn the periods now closed; the
        snapshots to publish (with model bytes after a period that had examples, then a
        marker of the boundary covered when it moved)."""
        if 0 <= partition < self.partitions:
            self.marks[partition] = max(clock_ms, self.marks.get(partition, clock_ms))
        low = self.low()
        if low is None:
            return []
        boundary = low // self.period_ms * self.period_ms
        if self.covered is not None and boundary <= self.covered:
            return []
        out = []
        for period in sorted(k for k in self.pending if (k + 1) * self.period_ms <= boundary):
            for example in sorted(self.pending.pop(period).values(), key=lambda e: (e.at, e.id)):
                self.waiting.discard(example.id)
                self.models.learn(example)
                self.learned[type(example).__name__.removesuffix("Example").lower()] += 1
            self.covered = self.model_boundary = (period + 1) * self.period_ms
            out.append(self._snapshot(with_models=True))
        if self.covered is None or self.covered < boundary:
            self.covered = boundary
            out.append(self._snapshot(with_models=False))
        return out

    def marker(self) -> Snapshot | None:
        """A marker of the current state (boundary covered, watermarks, counts), so the
        watermarks read since the last snapshot survive a restart; None before any boundary."""
        return self._snapshot(with_models=False) if self.covered is not None else None

    def _snapshot(self, with_models: bool) -> Snapshot:
        assert self.covered is not None
        models = state = None
        if with_models:
            self.models.stamp(version_of(self.covered))
            models = self.dumps(self.models)
            state_of = getattr(self.models, "trainer_state", None)
            state = state_of() if state_of is not None else None
        return Snapshot(
            boundary=self.covered, version=version_of(self.covered), model_boundary=self.model_boundary,
            learned=dict(self.learned), dropped=dict(self.dropped), marks=dict(self.marks), models=models, state=state,
        )


class SnapshotStore(Generic[M]):
    """A scorer's view of the published snapshots, and which models score event time t.

    Keeps the bytes of the last ``keep`` snapshots with models (a restarted worker
    re-processes records from its committed offsets, possibly several periods behind the
    trainer, and must score them with the models they had) and the ``loaded`` models of
    the few in use. A record older than every kept snapshot is scored by the oldest kept
    one and counted in ``misses`` (keep more to avoid it). Model bytes that ``loads``
    refuses are dropped (``on_refused`` is told) and the next older kept ones used.

    Thread-safe: the batched hot path scores on its own thread while snapshots arrive on
    the event loop (a look-up racing an ``add`` once failed with "dictionary changed size
    during iteration", which dead-lettered the record being scored)."""

    def __init__(
        self, fresh: Callable[[], M], loads: Callable[[bytes], M], period_ms: int, lag: int, keep: int = 32,
        on_refused: Callable[[int, Refused], None] = lambda boundary, refusal: None, keep_state: bool = True,
    ) -> None:
        self.keep_state = keep_state
        self.loads = loads
        self.on_refused = on_refused
        self.period_ms = period_ms
        self.lag = lag
        self.keep = max(1, keep)
        self.priors: M = fresh()
        self.kept: dict[int, bytes] = {}  #: boundary -> model bytes, the newest ``keep``
        self.loaded: dict[int, M] = {}  #: boundary -> models, the newest few used
        self.covered: int | None = None
        self.latest: Snapshot | None = None  #: the newest record read (its counts and marks)
        self.state: bytes | None = None  #: the trainer's state of the newest snapshot with models
        self.misses = 0
        self.first_models: int | None = None  #: boundary of the first snapshot with models read
        self._lock = threading.RLock()
        #: (target, models, boundary) of the last look-up: every record and due check asks, and
        #: the answer only changes when the target moves (once a period) or a snapshot arrives
        self._last: tuple[int, M, int | None] | None = None

    def add(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._add(snapshot)

    def _add(self, snapshot: Snapshot) -> None:
        if self.covered is not None and snapshot.boundary < self.covered:
            return  # older than what is covered: nothing new
        self._last = None
        self.latest = msgspec.structs.replace(snapshot, state=None) if snapshot.state is not None else snapshot
        self.covered = snapshot.boundary
        if snapshot.models is not None:
            if self.keep_state:  # (a trainer taking over resumes with it; one copy, not ``keep``)
                self.state = snapshot.state
            if self.first_models is None:
                self.first_models = snapshot.boundary
            self.kept[snapshot.boundary] = snapshot.models
            while len(self.kept) > self.keep:
                oldest = min(self.kept)
                del self.kept[oldest]
                self.loaded.pop(oldest, None)

    def target(self, t: int) -> int:
        return model_boundary(t, self.period_ms, self.lag)

    def ready(self, t: int) -> bool:
        """The trainer has covered the boundary whose models score event time ``t``."""
        return self.covered is not None and self.covered >= self.target(t)

    def boundary_at(self, t: int) -> int | None:
        """Boundary of the models that score event time ``t`` (None: the priors)."""
        with self._lock:
            return self._boundary_at(t)

    def _boundary_at(self, t: int) -> int | None:
        target = self.target(t)
        boundaries = [b for b in self.kept if b <= target]
        if boundaries:
            return max(boundaries)
        if self.kept and self.first_models is not None and self.first_models <= target:
            self.misses += 1  # its models were published but are no longer kept
            return min(self.kept)
        return None

    def models_at(self, t: int) -> tuple[M, int | None]:
        """The models that score event time ``t`` and their boundary (None: the priors).
        Before :meth:`ready`, the newest models known (a look-up, not a decision)."""
        with self._lock:
            return self._models_at(t)

    def _models_at(self, t: int) -> tuple[M, int | None]:
        target = self.target(t)
        last = self._last
        if last is not None and last[0] == target:
            return last[1], last[2]
        misses = self.misses
        models, boundary = self._look_up(t)
        if self.misses == misses:  # (a miss is counted at every look-up, so it is not remembered)
            self._last = (target, models, boundary)
        return models, boundary

    def _look_up(self, t: int) -> tuple[M, int | None]:
        while (boundary := self._boundary_at(t)) is not None:
            models = self.loaded.get(boundary)
            if models is not None:
                return models, boundary
            try:
                models = self.loaded[boundary] = self.loads(self.kept[boundary])
            except Refused as refusal:
                del self.kept[boundary]
                self.on_refused(boundary, refusal)
                continue
            while len(self.loaded) > self.lag + 2:
                del self.loaded[min(b for b in self.loaded if b != boundary)]
            return models, boundary
        return self.priors, None


class OfflineTraining(Generic[M]):
    """Trainer and selection in one process, for replays: every partition's watermark is
    the replay clock, so the same snapshots score the same records as on live workers."""

    def __init__(self, fresh: Callable[[], M], period_ms: int, lag: int, loads: Callable[[bytes], M] = load_models) -> None:
        self.trainer: Trainer[M] = Trainer(fresh(), period_ms, partitions=1)
        self.store: SnapshotStore[M] = SnapshotStore(fresh, loads, period_ms, lag, keep=lag + 2)
        self.snapshots = 0

    def add(self, example: Example) -> None:
        self.trainer.add(example)

    def advance(self, clock_ms: int) -> None:
        """The replay clock reached ``clock_ms`` (before the record at that time is processed)."""
        for snapshot in self.trainer.watermark(0, clock_ms):
            self.store.add(snapshot)
            self.snapshots += snapshot.models is not None

    def models_at(self, t: int) -> M:
        return self.store.models_at(t)[0]
