"""One input partition's user states: RocksDB on disk, a bounded cache in memory, one write per batch.

The batched hot path folds a micro-batch of a partition's records through the pure engine,
then takes the touched users' states **once** (:meth:`PartitionStore.changes`: one encode
per user, however many of the batch's records touched them) and, once the batch's outputs
are acknowledged, writes them in one RocksDB ``WriteBatch`` with the input offsets folded
(:meth:`PartitionStore.persist`) and produces one changelog record per touched user
(:mod:`streams.runtime.changelog`). A user touched by 40 clicks in a batch costs one
encode, one RocksDB put and one changelog record, not 40.

Decoded states stay in a least-recently-used cache of at most ``cache_users`` users
(write-back: a changed state is kept until it is persisted; only persisted states are
evicted), so memory is set by the cache size, not by the number of customers or the
length of the run.

Keys, the same in RocksDB and in the changelog: ``u`` + user id for a user's state, ``p`` +
name for a partition-wide value (the guard rails' budget, the attribution tally), ``e`` +
pseudonym for an entry of the erased-ids set (:mod:`streams.domain.privacy`), ``s`` +
pseudonym for the shop's own id of a pseudonymous customer (kept only when actions carry it), ``m`` +
name for the store's own bookkeeping (the input offsets folded, the changelog offset
applied up to; never in the changelog).
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager

from streams.domain.state import UserState, dump_state, load_state

_USER = b"u"
_PARTITION = b"p"
_ERASED = b"e"
_SHOP_ID = b"s"
_META = b"m"
_OFFSETS = _META + b"offsets"
_CHANGELOG = _META + b"changelog"
_offsets_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(dict[str, int]))


@dataclass(frozen=True)
class StoreOptions:
    """RocksDB memory per partition store (``RETENTION_ROCKSDB_*``) and the state cache size.

    ``memtables``: one budget shared by the memtables of every store opened with these
    options (a worker's partitions), from :meth:`sharing`. Without it each store fills a
    memtable of ``write_buffer_mb`` before it flushes (and a second one while it does), so a
    worker's memtables grow with the partitions it owns and, until they first fill, with the
    records it has written (the bench's RSS rose by ~80 MB from 100,000 to 200,000 records
    that way: docs/benchmarks.md, ninth round); with it the store being written flushes its
    memtable once their sum nears the budget (a soft bound: memtables being flushed count
    until they are written).
    """

    cache_users: int = 100_000
    block_cache_mb: int = 16
    write_buffer_mb: int = 16
    max_write_buffers: int = 2
    memtables: WriteBufferManager | None = field(default=None, compare=False, repr=False)

    @classmethod
    def sharing(cls, memtables_mb: int, **sizes: int) -> "StoreOptions":
        """Options whose stores share one memtable budget of ``memtables_mb`` (0: none)."""
        manager = WriteBufferManager(memtables_mb << 20, False) if memtables_mb > 0 else None
        return cls(memtables=manager, **sizes)

    def rocksdb(self) -> Options:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(self.write_buffer_mb << 20)
        options.set_max_write_buffer_number(self.max_write_buffers)
        if self.memtables is not None:
            options.set_write_buffer_manager(self.memtables)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(self.block_cache_mb << 20))
        options.set_block_based_table_factory(table)
        return options


class PartitionStore:
    """The users of one partition: ``get`` / ``put`` during a batch, ``changes`` at its end,
    ``persist`` once the batch's outputs are acknowledged.

    >>> import tempfile
    >>> store = PartitionStore(Path(tempfile.mkdtemp()) / "p0", StoreOptions(cache_users=1))
    >>> store.put(UserState("ann", purchases=2)); store.put(UserState("bob"))
    >>> records = store.changes()
    >>> [key for key, _ in records]
    [b'uann', b'ubob']
    >>> store.persist(records, {"clicks": 41})
    >>> store.get("ann").purchases, store.offsets(), len(store.cache)
    (2, {'clicks': 41}, 1)
    """

    def __init__(self, path: Path, options: StoreOptions = StoreOptions()) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.options = options
        self.db = Rdict(str(path), options.rocksdb())
        self.cache: OrderedDict[str, UserState | None] = OrderedDict()  # None: known to be absent
        self.dirty: set[str] = set()
        self.unpersisted: dict[bytes, int] = {}  #: keys taken by changes() and not persisted yet: how many times
        self.values: dict[str, bytes] = {}  #: partition-wide values (few: kept in memory)
        self.dirty_values: set[str] = set()
        self._erased: dict[str, bytes] | None = None  #: the erased-ids set (small: loaded whole on first use)
        self.dirty_erased: dict[str, bytes | None] = {}
        self.dirty_shop_ids: dict[str, str | None] = {}

    def get(self, user_id: str) -> UserState | None:
        """The user's state (the cached object: changes count once :meth:`put` says so)."""
        if user_id in self.cache:
            self.cache.move_to_end(user_id)
            return self.cache[user_id]
        raw = self.db.get(_USER + user_id.encode())
        state = None if raw is None else load_state(raw)
        self.cache[user_id] = state
        self._evict()
        return state

    def put(self, state: UserState) -> None:
        """Keep ``state`` as the user's; taken by the next :meth:`changes`."""
        self.cache[state.user_id] = state
        self.cache.move_to_end(state.user_id)
        self.dirty.add(state.user_id)

    def delete(self, user_id: str) -> None:
        """Forget the user: deleted from RocksDB and tombstoned in the changelog."""
        self.cache[user_id] = None
        self.dirty.add(user_id)

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """The changed users' records (key, encoded state or None), each encoded once, in
        key order; they stay in the cache until :meth:`persist` has written them."""
        records: list[tuple[bytes, bytes | None]] = []
        for user_id in sorted(self.dirty):
            state = self.cache.get(user_id)
            key = _USER + user_id.encode()
            records.append((key, None if state is None else dump_state(state)))
            self.unpersisted[key] = self.unpersisted.get(key, 0) + 1
        self.dirty.clear()
        records += [(_PARTITION + name.encode(), self.values[name]) for name in sorted(self.dirty_values)]
        self.dirty_values.clear()
        records += [(_ERASED + key.encode(), entry) for key, entry in sorted(self.dirty_erased.items())]
        self.dirty_erased.clear()
        records += [(_SHOP_ID + key.encode(), None if v is None else v.encode()) for key, v in sorted(self.dirty_shop_ids.items())]
        self.dirty_shop_ids.clear()
        return records

    def persist(self, records: list[tuple[bytes, bytes | None]], offsets: dict[str, int],
                changelog_next: int | None = None) -> None:
        """Write ``records`` (from :meth:`changes`), the input ``offsets`` folded (topic ->
        next offset) and how far the changelog holds this store's writes, in one WriteBatch."""
        batch = WriteBatch(raw_mode=True)
        for key, value in records:
            _write(batch, key, value)
            left = self.unpersisted.get(key, 0) - 1
            if left > 0:
                self.unpersisted[key] = left
            else:
                self.unpersisted.pop(key, None)
        if offsets:
            batch.put(_OFFSETS, _offsets_codec[0].encode({**self.offsets(), **offsets}))
        if changelog_next is not None:
            batch.put(_CHANGELOG, str(changelog_next).encode())
        self.db.write(batch)
        self._evict()

    def flush(self, offsets: dict[str, int], changelog_next: int | None = None) -> list[tuple[bytes, bytes | None]]:
        """:meth:`changes` and :meth:`persist` at once (when nothing waits for acknowledgements)."""
        records = self.changes()
        self.persist(records, offsets, changelog_next)
        return records

    def value(self, name: str) -> bytes | None:
        """A partition-wide value (the budget, the tally), as last set."""
        if name in self.values:
            return self.values[name]
        return self.db.get(_PARTITION + name.encode())

    def set_value(self, name: str, value: bytes) -> None:
        """Set a partition-wide value; taken by the next :meth:`changes`, like a user's state."""
        self.values[name] = value
        self.dirty_values.add(name)

    def erased(self, key: str) -> bytes | None:
        """The erased-ids entry of ``key`` (a pseudonym, or a user id), or None."""
        return self.erased_entries().get(key)

    def erased_entries(self) -> dict[str, bytes]:
        """The whole erased-ids set (read from RocksDB once, then kept in memory: a set lookup per event)."""
        if self._erased is None:
            self._erased = {}
            for key, value in self.db.items(from_key=_ERASED):
                if not key.startswith(_ERASED):
                    break
                self._erased[key[1:].decode()] = value
        return self._erased

    def set_erased(self, key: str, entry: bytes | None) -> None:
        """Add ``key`` to the erased-ids set (None: remove it, an expired entry); like a
        state, persisted and sent to the changelog with the next :meth:`changes`."""
        entries = self.erased_entries()
        if entry is None:
            entries.pop(key, None)
        else:
            entries[key] = entry
        self.dirty_erased[key] = entry

    def shop_id(self, key: str) -> str | None:
        """The shop's own id kept beside the pseudonymous customer ``key`` (None: none kept)."""
        if key in self.dirty_shop_ids:
            return self.dirty_shop_ids[key]
        raw = self.db.get(_SHOP_ID + key.encode())
        return None if raw is None else raw.decode()

    def set_shop_id(self, key: str, shop_id: str | None) -> None:
        """Keep (None: forget) the shop's id of ``key``; persisted and changelogged like a state."""
        self.dirty_shop_ids[key] = shop_id

    def offsets(self) -> dict[str, int]:
        """The next input offset of each topic whose records are folded into this store."""
        raw = self.db.get(_OFFSETS)
        return {} if raw is None else _offsets_codec[1].decode(raw)

    def restore(self, records: Iterable[tuple[bytes, bytes | None]]) -> int:
        """Apply changelog records (key, value; None deletes) in order, in WriteBatches;
        returns how many. The cache is emptied: it would hold states from before."""
        self.cache.clear()
        self.values.clear()
        self._erased = None
        count = 0
        batch = WriteBatch(raw_mode=True)
        for key, value in records:
            _write(batch, key, value)
            count += 1
            if batch.len() >= 10_000:
                self.db.write(batch)
                batch = WriteBatch(raw_mode=True)
        self.db.write(batch)
        return count

    def restored_to(self, changelog_next: int) -> None:
        """Remember that the changelog is applied up to ``changelog_next`` (exclusive): a
        later restore of a kept store starts there."""
        self.db.put(_CHANGELOG, str(changelog_next).encode())

    def changelog_next(self) -> int | None:
        """The changelog offset this store has applied up to (None: never restored)."""
        raw = self.db.get(_CHANGELOG)
        return None if raw is None else int(raw)

    def users(self) -> Iterable[UserState]:  # (persisted ones)
        """Every stored user (after a flush: the cache adds nothing the store lacks)."""
        for key, value in self.db.items(from_key=_USER):
            if not key.startswith(_USER):
                break
            yield load_state(value)

    def size(self) -> tuple[int, int]:
        """RocksDB's estimate of the keys and bytes (SST files and memtables) of this store."""
        keys = self.db.property_int_value("rocksdb.estimate-num-keys") or 0
        size = (self.db.property_int_value("rocksdb.total-sst-files-size") or 0) + (
            self.db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
        return keys, size

    def _evict(self) -> None:
        excess = len(self.cache) - self.options.cache_users
        if excess <= 0:
            return
        for user_id in list(self.cache):  # least recently used first
            if user_id not in self.dirty and _USER + user_id.encode() not in self.unpersisted:
                del self.cache[user_id]
                excess -= 1
                if not excess:
                    return

    def close(self) -> None:
        self.db.close()

    def destroy(self) -> None:
        """Close and delete the files (a partition given back, or state the broker no longer has)."""
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _write(batch: WriteBatch, key: bytes, value: bytes | None) -> None:
    """A changelog record into a WriteBatch: a value is put, none deletes."""
    if value is None:
        batch.delete(key)
    else:
        batch.put(key, value)
