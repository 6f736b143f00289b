"""The state layer of the batched path, without a broker: one write per batch, a bounded
cache, offsets kept with the states, and acknowledgement-ordered commits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.state import UserState, load_state
from streams.runtime.deliveries import Deliveries
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
    assert [key for key, _ in records] == [b"ann", b"bob"]
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
    assert s.flush({}) == [(b"ann", None)]
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


def test_commits_wait_for_every_earlier_batch_and_stop_at_a_failed_delivery() -> None:
    book = Deliveries()
    a = book.open({("clicks", 0): 10, ("clicks", 1): 4})
    b = book.open({("clicks", 0): 20})
    c = book.open({("clicks", 1): 9})
    for batch in (a, b, c):
        book.sent(batch, 2)
    book.acked(b); book.acked(b)
    assert book.committable() == {} and book.outstanding == 4
    book.acked(a); book.acked(a)
    assert book.committable() == {("clicks", 0): 20, ("clicks", 1): 4}
    book.acked(c, error="MSG_SIZE_TOO_LARGE"); book.acked(c)
    assert book.committable() == {} and book.error == "MSG_SIZE_TOO_LARGE"  # never past a lost record


def test_partitions_taken_away_are_not_committed_by_this_worker() -> None:
    book = Deliveries()
    batch = book.open({("clicks", 0): 10, ("clicks", 1): 4})
    book.drop({("clicks", 1)})
    assert book.committable() == {("clicks", 0): 10}
