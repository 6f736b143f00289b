"""Model snapshots are pickles: a record no trainer signed, or one whose pickle names a
global a bundle is not made of, is refused before it can run code (models.signing,
models.trainer), and the worker goes on with the models it had."""

from __future__ import annotations

import os
import pickle
import subprocess
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from models.bundle import Models
from models.churn import CHURN_PIPELINES, LOYALTY_PIPELINES
from models.examples import ChurnExample, ReviewExample, SegmentExample
from models.signing import UNSIGNED, Refused, SnapshotKeys, restricted_loads
from models.trainer import SNAPSHOT_VERSION, Snapshot, SnapshotStore, Trainer, decode_snapshot, dump_models, encode_snapshot, load_models
from streams.domain.features import MODEL_FEATURES
from tests.crafted import crafted_models

DAY = 86_400_000
KEY, OLD, OTHER = b"k" * 64, b"o" * 64, b"x" * 64
KEYS = SnapshotKeys(sign=KEY, accept=(KEY,))


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / f"pwned-{uuid.uuid4().hex}"
    yield path
    assert not path.exists(), "the crafted pickle ran"


def snapshot(boundary: int = DAY, models: bytes | None = None) -> Snapshot:
    return Snapshot(boundary=boundary, version="v", model_boundary=boundary if models else None, learned={}, dropped={},
                    marks={0: boundary}, models=models)


def trained(days: int = 2) -> list[Snapshot]:
    trainer = Trainer(Models.fresh(min_labels=5), DAY, partitions=1)
    out = []
    for day in range(days):
        trainer.add(ReviewExample(id=f"r{day}", at=day * DAY + 1, text="broke at once", rating=1))
        out += trainer.watermark(0, (day + 1) * DAY)
    return out


def test_the_crafted_pickle_does_run_code_when_loaded_plainly(tmp_path: Path) -> None:
    path = tmp_path / "ran"
    pickle.loads(zlib.decompress(crafted_models(path)))  # what every worker did before signing
    assert path.exists()


def test_a_signed_snapshot_round_trips_and_its_models_load() -> None:
    [s] = [s for s in trained(1) if s.models is not None]
    decoded = decode_snapshot(encode_snapshot(s, KEY), KEYS)
    assert decoded == s
    assert load_models(decoded.models).sentiment.labels == 1


def test_any_changed_byte_of_a_record_is_refused() -> None:
    [s] = [s for s in trained(1) if s.models is not None]
    raw = encode_snapshot(s, KEY)
    record = msgspec.msgpack.decode(raw)
    start, mac = raw.index(record["body"]), raw.index(record["sig"])
    for at in (start, start + len(record["body"]) // 2, mac, mac + 31):  # the body's first byte, a model byte, the MAC's
        tampered = bytearray(raw)
        tampered[at] ^= 1
        with pytest.raises(Refused) as refused:
            decode_snapshot(bytes(tampered), KEYS)
        assert refused.value.reason == "bad_signature"


def test_a_crafted_record_signed_with_another_key_is_refused_unread(marker: Path) -> None:
    raw = encode_snapshot(snapshot(models=crafted_models(marker)), OTHER)
    with pytest.raises(Refused, match="bad_signature"):
        decode_snapshot(raw, KEYS)


def test_a_record_written_before_signing_is_refused_as_unsigned(marker: Path) -> None:
    v1 = msgspec.msgpack.encode(msgspec.structs.replace(snapshot(models=crafted_models(marker)), v=1))  # as the old trainer wrote
    with pytest.raises(Refused) as refused:
        decode_snapshot(v1, KEYS)
    assert (refused.value.reason, refused.value.detail) == ("unsigned", UNSIGNED)
    no_mac = msgspec.msgpack.encode({"v": 2, "body": b"\x80"})
    with pytest.raises(Refused, match="unsigned"):
        decode_snapshot(no_mac, KEYS)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"", "malformed"), (b"\xc1garbage", "malformed"), (msgspec.msgpack.encode([1, 2]), "malformed"),
     (msgspec.msgpack.encode({"v": SNAPSHOT_VERSION + 1, "body": b"", "sig": b"s"}), "newer_format")],
)
def test_unreadable_records_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        decode_snapshot(raw, KEYS)
    assert refused.value.reason == reason


def test_a_signed_record_whose_pickle_names_a_forbidden_global_is_not_loaded(marker: Path) -> None:
    """Defence in depth: even with the key (a leaked one, a compromised trainer)."""
    s = decode_snapshot(encode_snapshot(snapshot(models=crafted_models(marker)), KEY), KEYS)
    with pytest.raises(Refused, match="forbidden_global: the pickle names posix.system"):
        load_models(s.models)


def test_a_store_skips_refused_models_and_scores_with_the_ones_before(marker: Path) -> None:
    refused: list[tuple[int, str]] = []
    store = SnapshotStore(lambda: Models.fresh(min_labels=5), load_models, DAY, lag=0,
                          on_refused=lambda boundary, refusal: refused.append((boundary, refusal.reason)))
    for s in trained(2):
        store.add(s)
    store.add(snapshot(3 * DAY, models=crafted_models(marker)))  # signed: it passed the record's check
    models, boundary = store.models_at(3 * DAY + 5)
    assert boundary == 2 * DAY and models.sentiment.labels == 2
    assert refused == [(3 * DAY, "forbidden_global")] and 3 * DAY not in store.kept
    store.add(snapshot(4 * DAY, models=b"not zlib"))
    store.kept = {4 * DAY: store.kept[4 * DAY]}  # nothing older kept: the priors answer
    assert store.models_at(4 * DAY + 5) == (store.priors, None)
    assert refused[-1] == (4 * DAY, "malformed")


def test_a_trainer_whose_models_are_refused_resumes_from_fresh_ones_and_says_why(marker: Path) -> None:
    latest = snapshot(2 * DAY, models=crafted_models(marker))
    trainer = Trainer.resume_from(latest, latest.models, load_models, Models.fresh(min_labels=5), DAY, 1)
    assert trainer.refused is not None and trainer.refused.reason == "forbidden_global"
    assert trainer.models.counts == {} and trainer.covered == 2 * DAY  # fresh models, the trainer's place kept
    assert Trainer.resume_from(latest, None, load_models, Models.fresh(), DAY, 1).refused is None


def test_keys_rotate_without_downtime() -> None:
    """Sign with the new key and accept the old one, then drop the old one."""
    old_record, new_record = encode_snapshot(snapshot(DAY), OLD), encode_snapshot(snapshot(2 * DAY), KEY)
    rotating = SnapshotKeys(sign=KEY, accept=(KEY, OLD))
    assert decode_snapshot(old_record, rotating).boundary == DAY
    assert decode_snapshot(new_record, rotating).boundary == 2 * DAY
    assert decode_snapshot(new_record, SnapshotKeys(sign=OLD, accept=(OLD, KEY))).boundary == 2 * DAY  # not yet moved
    with pytest.raises(Refused, match="bad_signature"):
        decode_snapshot(old_record, KEYS)  # rotation done: the old key no longer verifies


@pytest.mark.parametrize(
    "dangerous",
    [pickle.dumps(os.system), pickle.dumps(eval), pickle.dumps(exec), pickle.dumps(os.getcwd),
     pickle.dumps(subprocess.Popen),
     b"cbuiltins\n__import__\n.", b"cmodels.trainer\npickle\n.", b"cmodels.trainer\nzlib.decompress\n.",
     b"crandom\n_os\n.", b"cantigravity\nfly\n."],
)
def test_the_restricted_unpickler_refuses_globals_a_bundle_is_not_made_of(dangerous: bytes) -> None:
    with pytest.raises(Refused, match="forbidden_global"):
        restricted_loads(dangerous)


def test_getattr_in_a_pickle_reaches_listed_methods_only() -> None:
    import random

    gauss = restricted_loads(pickle.dumps(random.Random(3).gauss))
    assert isinstance(gauss(0.0, 1.0), float)
    sneaky = pickle.dumps(random.Random(3).seed)  # a method, but not one a bundle holds
    with pytest.raises(Refused, match="attribute 'seed' of a Random"):
        restricted_loads(sneaky)


def kinds() -> list[tuple[str, str]]:
    """Every churn and every loyalty learner at least once (pairs, the shorter list cycled)."""
    churn, loyalty = list(CHURN_PIPELINES), list(LOYALTY_PIPELINES)
    n = max(len(churn), len(loyalty))
    return [(churn[i % len(churn)], loyalty[i % len(loyalty)]) for i in range(n)]


@pytest.mark.parametrize(("churn", "loyalty"), kinds())
def test_a_trained_bundle_of_every_learner_kind_loads_with_the_allowlist(churn: str, loyalty: str) -> None:
    models = Models.fresh(min_labels=5, churn_kind=churn, loyalty_kind=loyalty, bgnbd_refit_periods=1,
                          churn_prior_learns=True, loyalty_prior_learns=True)
    for i in range(60):
        x = {"purchases": 1.0 + i % 5, "gap_mean_days": 3.0 + i % 17, "recency_days": float(i % 40)}
        models.learn(ChurnExample(id=f"u{i}", at=i, features=[x.get(n, (i * 7 % 11) / 3) for n in MODEL_FEATURES],
                                  churned=int(i % 3 == 0), days=i % 4, churn_p=0.3, loyalty_p=1.0))
        models.learn(SegmentExample(id=f"s{i}", at=i, x=x))
        if i % 4 == 0:
            models.learn(ReviewExample(id=f"r{i}", at=i, text="broke at once" if i % 8 else "love it", rating=1 + i % 5))
    models.stamp("1970-01-02")
    loaded = load_models(dump_models(models))
    assert loaded.report() == models.report()


def test_the_in_process_replays_bundle_loads_through_the_allowlist() -> None:
    """``retention evaluate`` snapshots its own bundle in process (never from the wire); a
    refusal there would score the replay with priors and part it from the workers."""
    from models.churn import ChurnModel, LoyaltyModel
    from streams.domain.evaluation import ReplayModels

    bundle = ReplayModels([ChurnModel(min_labels=1)], [LoyaltyModel(min_labels=1)])
    loaded = load_models(dump_models(bundle))
    assert type(loaded) is ReplayModels and len(loaded.churn_models) == len(loaded.loyalty_models) == 1
