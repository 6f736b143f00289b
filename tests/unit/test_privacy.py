"""Customers' privacy without a broker: pseudonyms (stability, routing, key rotation), the
erasure request contract, the erased-ids set in the partition store and its changelog, and
removal of a customer from every structure that keeps one (trainer, BG/NBD, loyalty)."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import pytest

from models.bgnbd_prior import BgNbdFit
from models.bundle import Models
from models.examples import BanditExample, ChurnExample, Forget, UpliftExample, ReviewExample, SegmentExample, Watermark, decode_example, encode_example
from models.trainer import Trainer
from streams.domain.events import Invalid
from streams.domain.loyalty import LoyaltyRanks
from streams.domain.guards import BudgetState, GuardLimits, Verdict, admit
from streams.domain.privacy import (
    ConsentChange, ErasedEntry, ErasureRequest, Pseudonyms, apply_consent, decode_consent, decode_erasure, dump_entry, expired,
    is_pseudonym, load_entry, pseudonym, removed_from,
)
from streams.domain.state import Awaiting, PendingScore, UserState
from streams.runtime.partitioning import make_partitioner
from streams.runtime.user_store import PartitionStore, StoreOptions
from tests.contract import SCHEMAS, schema_errors

KEY = b"k" * 32
OTHER = b"o" * 32
DAY = 86_400_000


def route8(s: str) -> int:
    return make_partitioner(8)(s)


# ---------------------------------------------------------------------------- pseudonyms

def test_a_pseudonym_is_the_keyed_hmac_sha256_of_the_id_and_stable() -> None:
    p = pseudonym(KEY, "alice@example.com", route8)
    digest = hmac.new(KEY, b"alice@example.com", "sha256").hexdigest()[:40]
    assert p.split(".")[0] == "ps_" + digest  # HMAC-SHA256, 160 bits, then a routing counter if needed
    assert pseudonym(KEY, "alice@example.com", route8) == p  # the same every time, on every worker
    assert is_pseudonym(p) and "alice" not in p


def test_a_pseudonym_is_routed_to_the_partition_of_the_id_it_replaces() -> None:
    for n in range(300):
        user = f"customer-{n}"
        p = pseudonym(KEY, user, route8)
        assert route8(p) == route8(user), user  # so a record keyed by either reaches the same owner


def test_another_key_gives_other_pseudonyms_and_rotation_keeps_both() -> None:
    users = [f"u{n}" for n in range(50)]
    old = Pseudonyms(OTHER, route=route8)
    new = Pseudonyms(KEY, [OTHER], route=route8)
    assert all(new.of(u) != old.of(u) for u in users)
    assert len({new.of(u) for u in users}) == len(users)  # no collisions among them
    assert all(new.all_of(u) == [new.of(u), old.of(u)] for u in users)


def test_ids_that_are_not_pseudonyms_are_recognised() -> None:
    assert not is_pseudonym("ps_xyz") and not is_pseudonym("PS_" + "a" * 40) and not is_pseudonym("ps_" + "a" * 39)


# ---------------------------------------------------------------------------- erasure requests: the contract

EXAMPLES = json.loads((SCHEMAS / "examples" / "erasure-requests.json").read_text())


@pytest.mark.parametrize("value", EXAMPLES["valid"], ids=lambda v: v["request_id"])
def test_valid_erasure_requests_pass_schema_and_decoder(value: dict) -> None:
    assert schema_errors("erasure-requests", value) == []
    request = decode_erasure(json.dumps(value).encode())
    assert isinstance(request, ErasureRequest) and request.subject == value.get("user_id", value.get("pseudonym"))


@pytest.mark.parametrize("case", EXAMPLES["invalid"], ids=lambda c: c["why"])
def test_invalid_erasure_requests_fail_schema_and_decoder(case: dict) -> None:
    assert schema_errors("erasure-requests", case["value"]) != []
    assert isinstance(decode_erasure(json.dumps(case["value"]).encode()), Invalid)


@pytest.mark.parametrize("raw", [None, b"", b"nope", b"[1]", b'{"x":' + b"[" * 50_000, b"\xff\xfe", b" " * 2_000_000])
def test_any_bytes_give_a_request_or_a_reason(raw: bytes | None) -> None:
    result = decode_erasure(raw)
    assert isinstance(result, Invalid) and result.error


# ---------------------------------------------------------------------------- the erased-ids set

def test_an_entry_round_trips_and_expires_after_its_retention() -> None:
    entry = ErasedEntry("r1", erased_at=1_000, removed={"state": 1, "events": 7})
    assert load_entry(dump_entry(entry)) == entry
    assert not expired(entry, now_ms=1_000 + 400 * DAY, keep_ms=400 * DAY)
    assert expired(entry, now_ms=1_001 + 400 * DAY, keep_ms=400 * DAY)


def store(path: Path) -> PartitionStore:
    return PartitionStore(path, StoreOptions(cache_users=100, block_cache_mb=1, write_buffer_mb=1))


def test_an_erasure_is_a_tombstone_and_an_entry_in_the_changelog_and_a_restore_keeps_both(tmp_path: Path) -> None:
    s = store(tmp_path / "a")
    s.put(UserState("ann", purchases=3))
    s.put(UserState("bob"))
    log = s.flush({"clicks": 5})
    s.delete("ann")
    s.set_erased("ann", dump_entry(ErasedEntry("r1", 0, {"state": 1})))
    records = s.flush({"erasure-requests": 1})
    assert (b"uann", None) in records and any(k == b"eann" and v for k, v in records)
    assert s.get("ann") is None and s.erased("ann") is not None and s.erased("bob") is None
    # a new machine restores the changelog in order: the user stays gone, the entry is back
    fresh = store(tmp_path / "b")
    fresh.restore(log + records)
    assert fresh.get("ann") is None and fresh.get("bob") is not None
    assert load_entry(fresh.erased("ann")).request_id == "r1"
    # an expired entry is removed the same way
    fresh.set_erased("ann", None)
    assert fresh.flush({}) == [(b"eann", None)] and fresh.erased("ann") is None
    again = store(tmp_path / "c")
    again.restore(log + records + [(b"eann", None)])
    assert again.erased("ann") is None and again.erased_entries() == {}


def test_the_erased_set_survives_a_reopen_of_the_store(tmp_path: Path) -> None:
    s = store(tmp_path / "a")
    s.set_erased("ps_x", dump_entry(ErasedEntry("r9", 5, {})))
    s.flush({})
    s.close()
    assert store(tmp_path / "a").erased_entries().keys() == {"ps_x"}


def test_what_a_state_held_is_counted_for_the_confirmation() -> None:
    state = UserState("u", clicks=4, purchases=2, reviews=1, pending=[PendingScore(0, [1.0])],
                      awaiting=[Awaiting("a1", 0, "coupon", "r", "treatment")], bought=["i1", "i2"])
    assert removed_from(state) == {"state": 1, "events": 7, "pending_labels": 1, "open_decisions": 1, "item_history": 2, "outbox": 0}


# ---------------------------------------------------------------------------- in-memory structures

def test_the_trainer_drops_an_erased_customers_examples_not_learned_yet_and_their_bgnbd_history() -> None:
    trainer = Trainer(Models.fresh(min_labels=5), DAY, partitions=1)
    x = {"recency_days": 3.0, "purchases": 2.0, "first_seen_days": 40.0, "gap_mean_days": 10.0}
    for user in ("ann", "bob"):
        trainer.add(ChurnExample(id=f"{user}@{DAY}/c", at=DAY + 5, features=[1.0] * 8, churned=0, days=None))
        trainer.add(SegmentExample(id=f"{user}@{DAY + 7}", at=DAY + 7, x=x))
    trainer.add(ReviewExample(id="r1", at=DAY + 9, text="fine", rating=4))
    trainer.add(BanditExample(id="act-ann", at=DAY + 8, bandit="lapse/coupon", arm="c10", context={"churn": 0.5}, reward=1.0, user="ann"))
    trainer.add(UpliftExample(id="act-ann2", at=DAY + 8, action="coupon", rule="r", group="control", features=[1.0] * 8,
                              converted=False, user="ann"))
    assert trainer.models.bgnbd is not None
    trainer.models.bgnbd.observe("ann", DAY, x)
    assert "ann" in trainer.models.bgnbd.histories
    assert trainer.forget("ann") == 5 and trainer.forgot_in_models  # four examples, one history (durable with the next models)
    left = {i for period in trainer.pending.values() for i in period}
    assert left == {f"bob@{DAY}/c", f"bob@{DAY + 7}", "r1"} and "ann" not in trainer.models.bgnbd.histories
    assert trainer.dropped["erased"] == 5
    trainer.watermark(0, 3 * DAY)
    assert trainer.learned["churn"] == 1 and trainer.learned["segment"] == 1  # bob's only
    assert trainer.forget("carl") == 0 and not trainer.forgot_in_models  # nothing held: nothing to wait for


def test_the_forget_record_round_trips_on_model_labels() -> None:
    assert decode_example(encode_example(Forget(user="ps_" + "a" * 40))) == Forget(user="ps_" + "a" * 40)
    assert isinstance(decode_example(encode_example(Watermark(0, 1))), Watermark)


def test_bgnbd_and_loyalty_forget_one_customer_only() -> None:
    fit = BgNbdFit(refit_periods=1)
    x = {"recency_days": 3.0, "purchases": 2.0, "first_seen_days": 40.0, "gap_mean_days": 10.0}
    fit.observe("a", 0, x)
    fit.observe("b", 0, x)
    assert fit.forget("a") and not fit.forget("a") and set(fit.histories) == {"b"}
    ranks = LoyaltyRanks(capacity=10)
    for n, user in enumerate(("a", "b", "c")):
        ranks.update(user, float(n), last_purchase=0, now=0)
    assert ranks.forget("b") and not ranks.forget("b") and len(ranks) == 2
    assert ranks.percentile("x", 1.0) == pytest.approx(0.5)  # b's prediction no longer counts


# ---------------------------------------------------------------------------- consent

CONSENT_EXAMPLES = json.loads((SCHEMAS / "examples" / "consents.json").read_text())


@pytest.mark.parametrize("value", CONSENT_EXAMPLES["valid"], ids=lambda v: v["user_id"])
def test_valid_consents_pass_schema_and_decoder(value: dict) -> None:
    assert schema_errors("consents", value) == []
    change = decode_consent(json.dumps(value).encode())
    assert isinstance(change, ConsentChange) and change.allow == value["allow"]


@pytest.mark.parametrize("case", CONSENT_EXAMPLES["invalid"], ids=lambda c: c["why"])
def test_invalid_consents_fail_schema_and_decoder(case: dict) -> None:
    assert schema_errors("consents", case["value"]) != []
    assert isinstance(decode_consent(json.dumps(case["value"]).encode()), Invalid)


def test_a_consent_from_the_future_is_refused_like_an_event() -> None:
    raw = b'{"user_id":"u1","ts":1767225600000,"allow":{"coupon":false}}'
    assert isinstance(decode_consent(raw, not_after_ms=1767225599999), Invalid)


def test_the_latest_statement_per_kind_wins_in_any_arrival_order() -> None:
    changes = [ConsentChange("u", 30, {"coupon": True}), ConsentChange("u", 10, {"coupon": False, "recommendation": False}),
               ConsentChange("u", 20, {"recommendation": True})]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]):
        state = UserState("u")
        for i in order:
            apply_consent(state, changes[i])
        assert {k: (c.allowed, c.ts) for k, c in state.consent.items()} == {"coupon": (True, 30), "recommendation": (True, 20)}


def test_the_guard_rails_suppress_a_kind_the_customer_refused_and_name_the_reason() -> None:
    limits = GuardLimits(count=10)
    user = UserState("u")
    apply_consent(user, ConsentChange("u", 0, {"coupon": False}))
    budget = BudgetState()
    assert admit("coupon", "a1", 0, user, budget, 1, limits) == Verdict(False, "no_consent")
    assert budget.count == 0 and "coupon" not in user.acted  # nothing spent, no cooldown started
    assert admit("recommendation", "a2", 0, user, budget, 1, limits).allowed  # not refused: allowed (opt-out)
    opt_in = GuardLimits(count=10, consent_required=True)
    assert admit("care_outreach", "a3", 0, user, budget, 1, opt_in) == Verdict(False, "no_consent")  # never allowed
    apply_consent(user, ConsentChange("u", 2, {"coupon": True, "care_outreach": True}))
    assert admit("coupon", "a1", 0, user, budget, 3, opt_in).allowed and admit("care_outreach", "a3", 0, user, budget, 3, opt_in).allowed


def test_a_state_encoded_before_consent_existed_loads_without_any() -> None:
    import msgspec

    from streams.domain.state import dump_state, load_state

    old = msgspec.msgpack.decode(dump_state(UserState("u", purchases=2)))[:-1]  # the same state without the new field
    state = load_state(msgspec.msgpack.encode(old))
    assert state.consent == {} and state.purchases == 2


# ---------------------------------------------------------------------------- settings

def privacy_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    from streams.runtime.settings import Settings

    for name in ("RETENTION_PSEUDONYMIZE", "RETENTION_PSEUDONYM_KEY", "RETENTION_PSEUDONYM_KEY_FILE",
                 "RETENTION_PSEUDONYM_KEYS_PREVIOUS", "RETENTION_CONSENT_REQUIRED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_pseudonyms_need_a_key_of_32_characters(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="no key is set"):
        privacy_settings(monkeypatch, RETENTION_PSEUDONYMIZE="true")
    with pytest.raises(ValidationError, match="at least 32 characters"):
        privacy_settings(monkeypatch, RETENTION_PSEUDONYMIZE="true", RETENTION_PSEUDONYM_KEY="short")
    key_file = tmp_path / "pseudonym.key"
    key_file.write_text("f" * 64 + "\n")
    settings = privacy_settings(monkeypatch, RETENTION_PSEUDONYMIZE="true",
                                RETENTION_PSEUDONYM_KEY_FILE=str(key_file), RETENTION_PSEUDONYM_KEYS_PREVIOUS="o" * 32)
    assert settings.pseudonym_keys == (b"f" * 64, b"o" * 32)  # (the key file's whitespace stripped)
    assert privacy_settings(monkeypatch, RETENTION_PSEUDONYM_KEY="k" * 32).pseudonym_keys == ()  # off: no pseudonyms


def test_topics_we_create_get_retention_and_bounded_compaction_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = privacy_settings(monkeypatch)
    assert settings.topic_config(settings.topic_scores) == {"cleanup.policy": "compact", "max.compaction.lag.ms": str(7 * DAY)}
    assert settings.topic_config(settings.topic_erasure_requests) == {"retention.ms": str(30 * DAY)}
    assert {settings.topic_erasure_requests, settings.topic_erasure_confirmations, settings.topic_consents} <= set(settings.all_topics)


# ---------------------------------------------------------------------------- the worker's hooks, without a broker

class FakeIngest:
    """What :class:`streams.runtime.privacy.Privacy` uses of the batched ingest: its settings,
    partitioner, in-memory structures, and what it sends (recorded)."""

    def __init__(self, settings: object) -> None:
        from streams.domain.population import Population

        self.settings = settings
        self.partition_for = make_partitioner(settings.partitions)  # type: ignore[attr-defined]
        self.population = Population()
        self.loyalty_ranks = LoyaltyRanks(capacity=100)
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    def _emit(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        self.sent.append((topic, key, value))

    def _label(self, example: object) -> None:
        self.sent.append(("model-labels", None, encode_example(example)))  # type: ignore[arg-type]


def work_of(tmp_path: Path, partition: int) -> object:
    from types import SimpleNamespace

    from streams.domain.schedule import DueQueue

    return SimpleNamespace(partition=partition, store=store(tmp_path / f"p{partition}"), queue=DueQueue(), rewritten=set())


def hooks(monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[object, FakeIngest]:
    from streams.runtime.privacy import Privacy

    settings = privacy_settings(monkeypatch, RETENTION_PARTITIONS="4", **env)
    ingest = FakeIngest(settings)
    return Privacy(ingest), ingest  # type: ignore[arg-type]


T0 = 1_767_225_600_000  # 2026-01-01


def click(user: str, ts: int = T0) -> object:
    from streams.domain.events import decode

    return decode("clicks", json.dumps({"event_id": f"e{ts}", "user_id": user, "ts": ts, "kind": "search"}).encode())


def test_an_erasure_removes_the_customer_from_every_structure_and_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from streams.domain.population import rfm_of

    privacy, ingest = hooks(monkeypatch, RETENTION_PSEUDONYMIZE="true", RETENTION_PSEUDONYM_KEY="k" * 32)
    work = work_of(tmp_path, ingest.partition_for("ann"))
    folded = privacy.edge(work, "clicks", click("ann"))
    ann = folded.user_id
    assert is_pseudonym(ann) and ann == privacy.key_of("ann") == privacy.key_of(ann)
    state = UserState(ann, purchases=2, last_purchase=DAY, spend_cents=5000, clicks=1, bought=["i1"])
    work.store.put(state)
    ingest.population.update(None, rfm_of(state))
    ingest.loyalty_ranks.update(ann, 3.0, last_purchase=DAY, now=DAY)
    work.queue.schedule(ann, 5 * DAY)
    work.store.flush({})

    request = decode_erasure(json.dumps({"request_id": "r1", "user_id": "ann", "requested_at": T0}).encode())
    privacy.erase(work, None, request)
    assert work.store.get(ann) is None and work.queue.due(ann) is None
    assert ingest.population.size == 0 and len(ingest.loyalty_ranks) == 0
    records = dict(work.store.flush({}))
    assert records[b"u" + ann.encode()] is None and load_entry(records[b"e" + ann.encode()]).request_id == "r1"
    topics = [(topic, key) for topic, key, _ in ingest.sent]
    assert (ingest.settings.topic_scores, ann.encode()) in topics  # the user-scores row tombstoned
    assert (ingest.settings.topic_scores, b"ann") in topics  # and any row from before pseudonyms
    assert any(t == "model-labels" and decode_example(v) == Forget(user=ann) for t, _, v in ingest.sent)
    [confirmation] = [json.loads(v) for t, _, v in ingest.sent if t == ingest.settings.topic_erasure_confirmations]
    assert schema_errors("erasure-confirmations", confirmation) == []
    assert confirmation["removed"] == {"state": 1, "events": 3, "pending_labels": 0, "open_decisions": 0, "item_history": 1,
                                       "outbox": 0, "rfm_population": 1, "due_schedule": 1, "loyalty_ranking": 1,
                                       "user_scores_rows": 1, "trainer_notified": 1}
    # the customer's events, and a repeated request
    assert privacy.edge(work, "clicks", click("ann", T0 + DAY)) is None
    privacy.erase(work, None, request)
    again = json.loads([v for t, _, v in ingest.sent if t == ingest.settings.topic_erasure_confirmations][-1])
    assert again["repeated"] and again["removed"] == confirmation["removed"]


def test_a_request_on_the_wrong_partition_goes_on_to_its_owner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    privacy, ingest = hooks(monkeypatch)
    owner = ingest.partition_for("ann")
    work = work_of(tmp_path, (owner + 1) % 4)
    request = decode_erasure(b'{"request_id":"r1","user_id":"ann","requested_at":1767225600000}')

    class Msg:
        def value(self) -> bytes:
            return b"the request"

    privacy.erase(work, Msg(), request)
    assert ingest.sent == [(ingest.settings.topic_erasure_requests, b"ann", b"the request")]
    assert work.store.erased_entries() == {}


def test_a_rotated_key_moves_the_state_to_the_new_pseudonym_at_the_next_event(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old_hooks, _ = hooks(monkeypatch, RETENTION_PSEUDONYMIZE="true", RETENTION_PSEUDONYM_KEY="o" * 32)
    privacy, ingest = hooks(monkeypatch, RETENTION_PSEUDONYMIZE="true", RETENTION_PSEUDONYM_KEY="k" * 32,
                            RETENTION_PSEUDONYM_KEYS_PREVIOUS="o" * 32)
    work = work_of(tmp_path, ingest.partition_for("ann"))
    old = old_hooks.key_of("ann")
    work.store.put(UserState(old, purchases=4))
    work.queue.schedule(old, 9 * DAY)
    work.store.flush({})
    new = privacy.edge(work, "clicks", click("ann")).user_id
    assert new != old and work.store.get(new).purchases == 4 and work.store.get(old) is None
    assert work.queue.due(new) == 9 * DAY and work.queue.due(old) is None
    # an erasure names every key's pseudonym; the erased-ids set covers both
    privacy.erase(work, None, decode_erasure(b'{"request_id":"r2","user_id":"ann","requested_at":1767225600000}'))
    assert set(work.store.erased_entries()) == {new, old}


def test_actions_carry_the_shop_id_only_where_the_operator_allows_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from streams.domain.actions import Reason, RetentionAction

    for allowed in (False, True):
        privacy, ingest = hooks(monkeypatch, RETENTION_PSEUDONYMIZE="true", RETENTION_PSEUDONYM_KEY="k" * 32,
                                RETENTION_ACTIONS_INCLUDE_USER_ID=str(allowed).lower())
        work = work_of(tmp_path / str(allowed), ingest.partition_for("ann"))
        ann = privacy.edge(work, "clicks", click("ann")).user_id
        action = RetentionAction(
            action_id="a-1", user_id=ann, ts="2026-02-05T00:00:00.000Z", kind="care_outreach",
            payload={"priority": "high", "topic": "negative_review"},
            reason=Reason(rule="care", scores={"churn": 0.5}, model_versions={"churn": "prior"}),
            group="treatment", expires_at="2026-02-19T00:00:00.000Z",
        )
        value = json.loads(privacy.action_value(work, action))
        assert value["user_id"] == ann and value.get("shop_user_id") == ("ann" if allowed else None)
        assert schema_errors("retention-actions", value) == []


def test_a_broker_that_refuses_max_compaction_lag_gets_the_topic_without_it() -> None:
    from concurrent.futures import Future

    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    from streams.runtime.kafka import create_new_topics

    class OldBroker:
        def __init__(self) -> None:
            self.made: dict[str, dict[str, str]] = {}

        def create_topics(self, topics: list, operation_timeout: float) -> dict:
            out = {}
            for topic in topics:
                future: Future = Future()
                if "max.compaction.lag.ms" in (topic.config or {}):
                    future.set_exception(KafkaException(KafkaError(KafkaError.INVALID_CONFIG, "unknown config")))
                else:
                    self.made[topic.topic] = dict(topic.config or {})
                    future.set_result(None)
                out[topic.topic] = future
            return out

    broker = OldBroker()
    wanted = [NewTopic("scores", 4, 1, config={"cleanup.policy": "compact", "max.compaction.lag.ms": "1"}), NewTopic("plain", 4, 1)]
    assert sorted(create_new_topics(broker, wanted, 5)) == ["plain", "scores"]
    assert broker.made == {"plain": {}, "scores": {"cleanup.policy": "compact"}}  # still compacted


def test_the_fast_murmur2_is_the_java_clients() -> None:
    import random

    from aiokafka.partitioner import murmur2

    from streams.runtime.partitioning import murmur2_words

    rng = random.Random(7)
    for _ in range(20_000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 90)))
        assert murmur2_words(data) == murmur2(data), data
