"""The state layer of the batched path, without a broker: one write per batch, a bounded
cache, offsets kept with the states, and acknowledgement-ordered commits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.state import UserState, load_state
from streams.runtime.deliveries import Ledger
from streams.runtime.user_store import PartitionStore, StoreOptions


def store(tmp_path: Path, cache: int = 100) -> PartitionStore:
    return PartitionStore(tmp_path / "p0", StoreOptions(cache_users=cache, block_cache_mb=1, write_buffer_mb=1))


def test_a_batch_writes_each_touched_user_once_with_the_offsets_folded(tmp_path: Path) -> None:
    s = store(tmp_path)
    for n in range(40):  # 40 events of one user in a batch
        state = s.get("ann") or UserState("ann")
        state.purchases = n
        s.put(state)
    s.put(UserState("bob"))
    records = s.flush({"clicks": 120, "purchases": 7})
    assert [key for key, _ in records] == [b"uann", b"ubob"]
    assert load_state(records[0][1]).purchases == 39
    assert s.flush({}) == []  # nothing changed since
    s.close()
    again = store(tmp_path)
    assert again.get("ann").purchases == 39 and again.offsets() == {"clicks": 120, "purchases": 7}


def test_the_cache_is_bounded_and_never_evicts_a_change_before_it_is_written(tmp_path: Path) -> None:
    s = store(tmp_path, cache=10)
    for n in range(50):
        s.put(UserState(f"u{n}", purchases=n))
    assert len(s.cache) == 50  # all dirty: kept until the flush
    s.flush({"clicks": 1})
    assert len(s.cache) == 10
    assert all(s.get(f"u{n}").purchases == n for n in range(50))  # evicted ones come back from RocksDB
    assert len(s.cache) == 10


def test_offsets_accumulate_across_batches(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.flush({"clicks": 5})
    s.flush({"purchases": 3})
    s.flush({"clicks": 9})
    assert s.offsets() == {"clicks": 9, "purchases": 3}


def test_a_deleted_user_is_gone_and_tombstoned(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.put(UserState("ann", purchases=3))
    s.flush({})
    s.delete("ann")
    assert s.get("ann") is None
    assert s.flush({}) == [(b"uann", None)]
    s.cache.clear()
    assert s.get("ann") is None and [u.user_id for u in s.users()] == []


def test_restore_applies_the_last_record_of_each_key_and_remembers_where_it_stopped(tmp_path: Path) -> None:
    source = store(tmp_path / "a")
    log: list[tuple[bytes, bytes | None]] = []
    for n in range(3):
        source.put(UserState("ann", purchases=n))
        source.put(UserState(f"only-{n}"))
        log += source.flush({})
    source.delete("only-1")
    log += source.flush({})
    target = store(tmp_path / "b")
    assert target.changelog_next() is None
    assert target.restore(iter(log)) == len(log)
    target.restored_to(len(log))
    assert target.changelog_next() == len(log)
    target.flush({}, changelog_next=len(log) + 5)  # acknowledged writes of its own move it on
    assert target.changelog_next() == len(log) + 5
    assert sorted(u.user_id for u in target.users()) == ["ann", "only-0", "only-2"]
    assert target.get("ann").purchases == 2


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 9)), max_size=12), max_size=8),
       st.integers(1, 4))
def test_any_sequence_of_batches_reads_back_as_a_dict_would(tmp_path_factory: pytest.TempPathFactory,
                                                             batches: list[list[tuple[str, int]]], cache: int) -> None:
    s = store(tmp_path_factory.mktemp("s"), cache=cache)
    truth: dict[str, int] = {}
    for batch in batches:
        for user, value in batch:
            state = s.get(user) or UserState(user)
            state.purchases = value
            s.put(state)
            truth[user] = value
        s.flush({"clicks": len(truth)})
        assert len(s.cache) <= cache
    assert {u.user_id: u.purchases for u in s.users()} == truth
    assert {user: s.get(user).purchases for user in truth} == truth


def test_changes_stay_in_the_cache_until_persisted_and_partition_values_travel_with_them(tmp_path: Path) -> None:
    s = store(tmp_path, cache=2)
    for n in range(5):
        s.put(UserState(f"u{n}", purchases=n))
    s.set_value("budget", b"B1")
    first = s.changes()  # batch 1: taken, its outputs in flight
    assert [k for k, _ in first] == [b"uu0", b"uu1", b"uu2", b"uu3", b"uu4", b"pbudget"]
    s.put(UserState("other"))
    second = s.changes()  # batch 2 folded meanwhile
    assert len(s.cache) == 6  # nothing evictable: none is in RocksDB yet
    assert s.get("u3").purchases == 3 and s.value("budget") == b"B1"
    s.persist(first, {"clicks": 5})
    s.persist(second, {"clicks": 6})
    assert len(s.cache) == 2 and s.get("u3").purchases == 3 and s.offsets() == {"clicks": 6}
    s.values.clear()
    assert s.value("budget") == b"B1"


def test_states_are_stored_only_after_the_outputs_and_offsets_committed_only_after_the_changelog() -> None:
    ledger = Ledger()
    a, b = ledger.open(), None
    ledger.sent(a, 2)
    ledger.seal(a, {("clicks", 0): 10, ("clicks", 1): 4}, {0: "A"})
    b = ledger.open()
    ledger.sent(b, 1)
    ledger.seal(b, {("clicks", 0): 20}, {0: "B"})
    ledger.acked(b.id)
    assert ledger.to_store() == []  # b's outputs are in, a's are not: nothing may be stored before a
    ledger.acked(a.id); ledger.acked(a.id)
    assert [x.id for x in ledger.to_store()] == [a.id, b.id]
    ledger.stored(a, changelog_records=3)
    ledger.stored(b, changelog_records=0)  # nothing changed in b: done at once
    assert ledger.committable() == {} and ledger.in_flight == 3  # b waits for a
    for _ in range(3):
        ledger.acked(a.id)
    assert ledger.committable() == {("clicks", 0): 20, ("clicks", 1): 4}


def test_a_failed_delivery_stops_storing_and_committing_at_its_batch() -> None:
    ledger = Ledger()
    a = ledger.open(); ledger.sent(a); ledger.seal(a, {("clicks", 0): 5}, {})
    b = ledger.open(); ledger.sent(b); ledger.seal(b, {("clicks", 0): 9}, {})
    ledger.acked(a.id)
    ledger.acked(b.id, error="MSG_SIZE_TOO_LARGE")
    assert [x.id for x in ledger.to_store()] == [a.id]
    ledger.stored(a, 0)
    assert ledger.committable() == {("clicks", 0): 5}
    assert ledger.to_store() == [] and ledger.committable() == {} and ledger.error == "MSG_SIZE_TOO_LARGE"


def test_partitions_taken_away_are_not_stored_or_committed_by_this_worker() -> None:
    ledger = Ledger()
    batch = ledger.open()
    ledger.seal(batch, {("clicks", 0): 10, ("clicks", 1): 4}, {0: "A", 1: "B"})
    ledger.drop({1})
    assert batch.changes == {0: "A"}
    ledger.stored(ledger.to_store()[0], 0)
    assert ledger.committable() == {("clicks", 0): 10}


def _memtables_peak(root: Path, options: StoreOptions, stores: int = 8, rounds: int = 40, users: int = 200) -> tuple[int, list[PartitionStore]]:
    """Write ``rounds`` batches of ``users`` states to each of ``stores`` stores; the largest sum
    of their memtables seen after a round."""
    parts = [PartitionStore(root / f"p{p}", options) for p in range(stores)]
    most = 0
    for n in range(rounds):
        for p, s in enumerate(parts):
            for u in range(users):
                s.put(UserState(f"u{u}", purchases=n, spend_cents=(n * 7919 + u * 104729 + p) % 10**9))
            s.flush({"clicks": n})
        most = max(most, sum(s.db.property_int_value("rocksdb.size-all-mem-tables") for s in parts))
    return most, parts


def test_a_shared_memtable_budget_bounds_the_stores_together_and_they_keep_answering(tmp_path: Path) -> None:
    """Eight stores of 1 MB memtables fill 5-8 MB alone; sharing a 1 MB budget, RocksDB flushes
    as their sum nears it (a soft bound: memtables being flushed count until they are written:
    1.6-2.5 MB seen, hence the margin), and every state reads back as last written."""
    sizes = dict(cache_users=100, block_cache_mb=1, write_buffer_mb=1)
    alone, _ = _memtables_peak(tmp_path / "alone", StoreOptions(**sizes))
    budget = StoreOptions.sharing(1, **sizes)
    shared, parts = _memtables_peak(tmp_path / "shared", budget)
    assert alone > 5 << 20
    assert shared < alone / 2
    assert budget.memtables is not None and budget.memtables.get_buffer_size() == 1 << 20
    for p, s in enumerate(parts):
        s.cache.clear()  # read from RocksDB, not the cache
        assert [s.get(f"u{u}").spend_cents for u in (0, 199)] == [(39 * 7919 + u * 104729 + p) % 10**9 for u in (0, 199)]
        assert s.offsets() == {"clicks": 39}
    assert StoreOptions.sharing(0, **sizes).memtables is None  # 0: each store on its own
