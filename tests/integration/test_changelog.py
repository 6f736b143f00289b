"""The user-state changelog on the real embedded broker: written once per batch, restored to
its end into an empty data dir, and resumed from where a kept store stopped."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from streams.domain.state import UserState
from streams.runtime.changelog import ChangelogWriter, changelog_topic, create_changelog, restore
from streams.runtime.deliveries import Ledger
from streams.runtime.kafka import producer
from streams.runtime.user_store import PartitionStore, StoreOptions
from tests.integration.conftest import settings_of

pytestmark = pytest.mark.integration


def _store(path: Path) -> PartitionStore:
    return PartitionStore(path, StoreOptions(cache_users=50, block_cache_mb=1, write_buffer_mb=1))


def test_states_written_per_batch_are_restored_into_an_empty_data_dir(broker_env: dict[str, str], tmp_path: Path) -> None:
    settings = settings_of({**broker_env, "RETENTION_APP_ID": f"rs-changelog-{uuid.uuid4().hex[:8]}", "RETENTION_PARTITIONS": "2"})
    assert create_changelog(settings) and not create_changelog(settings)
    client = producer(settings)
    writer = ChangelogWriter(settings, client)
    ledger = Ledger()
    stores = [_store(tmp_path / "live" / str(p)) for p in (0, 1)]
    for n in range(30):  # 30 batches per partition; each touches 20 users, some again and again
        for partition, store in enumerate(stores):
            for u in range(20):
                user = f"p{partition}-u{(n * 7 + u) % 120}"
                state = store.get(user) or UserState(user)
                state.purchases += 1
                store.put(state)
            if n == 20 and partition == 1:
                store.delete("p1-u3")
            batch = ledger.open()  # (no outputs here: straight to the state phase)
            ledger.seal(batch, {("clicks", partition): (n + 1) * 100}, {})
            records = store.flush({"clicks": (n + 1) * 100})
            assert ledger.to_store() == [batch]
            ledger.stored(batch, writer.send(partition, records, lambda err, msg, b=batch.id: ledger.acked(b, err and str(err))))
            client.poll(0)
    assert client.flush(30) == 0
    assert ledger.error is None and ledger.committable() == {("clicks", 0): 3000, ("clicks", 1): 3000}

    fresh = {p: _store(tmp_path / "restored" / str(p)) for p in (0, 1)}
    done = restore(settings, fresh)
    for partition, live in enumerate(stores):
        truth = {u.user_id: u.purchases for u in live.users()}
        assert done.records[partition] == 30 * 20 + (partition == 1) and done.end[partition] == done.records[partition]
        assert {u.user_id: u.purchases for u in fresh[partition].users()} == truth
    assert fresh[1].get("p1-u3") is None

    # a kept store resumes where it stopped: only what was written since is read
    for partition, live in enumerate(stores):
        more = live.get(f"p{partition}-u0")
        more.purchases += 100
        live.put(more)
        writer.send(partition, live.flush({}), lambda err, msg: None)
    assert client.flush(30) == 0
    again = restore(settings, fresh)
    assert again.start == done.end and again.records == {0: 1, 1: 1}
    assert [fresh[p].get(f"p{p}-u0").purchases for p in (0, 1)] == [stores[p].get(f"p{p}-u0").purchases for p in (0, 1)]
    assert changelog_topic(settings).endswith("-user-state-changelog")
