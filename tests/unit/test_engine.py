"""The decision path of one user, driven by explicit event times, no broker."""

from __future__ import annotations

import pytest

from models.churn import ChurnModel, LoyaltyModel, recency_prior
from models.score import Score
from streams.domain.actions import decode_action, encode_action
from streams.domain.engine import EngineConfig, Unknown, due_at, on_due, on_event, went_out
from streams.domain.events import Click, ClickKind, Item, Outcome, OutcomeKind, Purchase, Review
from streams.domain.features import MODEL_FEATURES, as_dict, feature_vector, features
from streams.domain.policy import PolicyConfig
from streams.domain.schedule import DueQueue
from streams.domain.state import RECENT_IDS, Applied, StateConfig, UserState, apply_event, dump_state, load_state, purchase_gaps
from streams.domain.timestamps import MS_PER_DAY
from tests.contract import schema_errors

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CFG = EngineConfig(churn_horizon_days=30, sweep_days=0, policy=PolicyConfig(control_share=0.0))  # the policy alone
SWEEP = EngineConfig(churn_horizon_days=30, policy=PolicyConfig(control_share=0.0))  # daily sweeps


def day(n: float) -> int:
    return T0 + int(n * MS_PER_DAY)


def purchase(n: float, eid: str | None = None, total: float = 50.0) -> Purchase:
    return Purchase(
        event_id=eid or f"p{n}", user_id="u1", ts=day(n), order_id=f"o{n}",
        items=[Item(item_id="i1", quantity=1, unit_price=total)], total=total, currency="EUR", channel="web",
    )


def feed(state: UserState, event, cfg: EngineConfig = CFG, now: int | None = None):
    """The engine at a clock that has just reached the event (a sorted stream)."""
    return on_event(state, event, event.ts if now is None else now, cfg)


def fold(state: UserState, event) -> Applied:
    return apply_event(state, event, event.ts, StateConfig())


class Fixed:
    """A scorer that always answers the same (the engine must obey the threshold)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, x: dict[str, float]) -> Score:
        return Score(self.value, "fixed-1")


def streak(state: UserState, days: list[float]) -> None:
    for n in days:
        feed(state, purchase(n), CFG)


def test_duplicate_events_count_once() -> None:
    state = UserState("u1")
    assert feed(state, purchase(0, "same"), CFG).applied is Applied.OK
    assert feed(state, purchase(0, "same"), CFG).applied is Applied.DUPLICATE
    assert state.purchases == 1 and state.spend_cents == 5000


def test_dedup_memory_is_bounded() -> None:
    state = UserState("u1")
    for i in range(RECENT_IDS * 3):
        fold(state, Click(event_id=f"c{i}", user_id="u1", ts=day(i / 100), kind=ClickKind.PAGE_VIEW))
    assert len(state.recent_ids) == RECENT_IDS
    assert state.clicks == RECENT_IDS * 3


def test_state_round_trips_through_msgpack() -> None:
    state = UserState("u1")
    streak(state, [0, 7, 14])
    assert load_state(dump_state(state)) == state


def test_gap_statistics_and_features_at_event_time() -> None:
    state = UserState("u1")
    streak(state, [0, 10, 30])  # gaps 10 and 20
    mean, std = purchase_gaps(state)
    assert mean == 15.0 and abs(std - 7.0710678) < 1e-6
    x = as_dict(feature_vector(state, day(45)))
    assert list(x) == list(MODEL_FEATURES)
    assert x["recency_days"] == 15.0 and x["recency_over_gap"] == 1.0 and x["first_seen_days"] == 45.0
    assert x["purchases"] == 3 and x["avg_order_value"] == 50.0


def test_purchase_beyond_the_lateness_counts_in_lifetime_figures_and_gaps() -> None:
    state = UserState("u1")
    streak(state, [0, 10])
    assert feed(state, purchase(5), CFG, now=day(10)).applied is Applied.LATE  # 5 days behind the clock
    assert state.purchases == 3 and state.last_purchase == day(10)
    assert purchase_gaps(state) == (5.0, 0.0)  # gaps 5 and 5, whatever the arrival order
    assert features(state, day(10))["purchases_7d"] == 1  # its window had closed


def test_reviews_and_outcomes_update_state() -> None:
    state = UserState("u1")
    fold(state, Review(event_id="r1", user_id="u1", ts=day(1), item_id="i", rating=2))
    fold(state, Review(event_id="r2", user_id="u1", ts=day(2), item_id="i", rating=4))
    assert state.reviews == 2 and state.rating_sum == 6 and state.last_rating == 4
    fold(state, Outcome(action_id="a", user_id="u1", ts=day(3), outcome=OutcomeKind.UNSUBSCRIBED))
    assert state.unsubscribed


NO_SWEEP = EngineConfig(churn_horizon_days=30, sweep_days=0, policy=PolicyConfig(control_share=0.0))


def labels(step) -> list[tuple[int, int | None, int | None]]:
    return [(m.ts, m.churned, m.days) for m in step.examples]


def test_purchase_inside_the_horizon_resolves_churn_at_once_and_loyalty_at_its_end() -> None:
    state = UserState("u1")
    feed(state, purchase(0), NO_SWEEP)
    assert labels(feed(state, purchase(10), NO_SWEEP)) == [(day(0), 0, None)]
    # day 0's point: the same UTC day again, still 1 purchase day; day 10's point: its first
    assert labels(feed(state, purchase(10.2), NO_SWEEP)) == [(day(10), 0, None)] and state.pending[0].days == 1
    feed(state, purchase(20), NO_SWEEP)
    assert [p.ts for p in state.pending] == [day(0), day(10), day(20)]  # 10.2 is too close to 10 (H/4 = 7.5 d)
    assert on_due(state, day(30), Fixed(0.0), NO_SWEEP).examples == []
    assert labels(on_due(state, day(30) + 1, Fixed(0.0), NO_SWEEP)) == [(day(0), None, 2)]  # days 10 and 20


def test_silence_past_horizon_matures_churn_with_zero_purchase_days() -> None:
    state = UserState("u1")
    step = feed(state, purchase(0), NO_SWEEP)
    assert step.due_ms == day(30) + 1
    matured = on_due(state, day(30) + 1, Fixed(0.0), NO_SWEEP)
    assert labels(matured) == [(day(0), 1, 0)]
    assert matured.examples[0].features[0] == 0.0  # recency at the purchase itself


def test_sweeps_rescore_a_silent_customer_on_the_daily_grid_with_the_predictions() -> None:
    state = UserState("u1")
    step = on_event(state, purchase(0.5), day(0.5), SWEEP, churn=Fixed(0.3), loyalty=Fixed(1.5))
    assert [(p.ts, p.churn_p, p.loyalty_p) for p in step.points] == [(day(0.5), 0.3, 1.5)]
    assert step.due_ms == day(8)  # the first midnight at least H/4 = 7.5 days after the last point
    swept = on_due(state, day(8), Fixed(0.7), SWEEP, Fixed(0.2))
    assert [(p.ts, p.churn_p, p.loyalty_p) for p in swept.points] == [(day(8), 0.7, 0.2)]
    assert swept.points[0].features[0] == 7.5 and state.swept_at == day(8)
    assert swept.due_ms == day(16)
    assert on_due(state, day(16), Fixed(0.7), SWEEP).points[0].ts == day(16)
    assert len(state.pending) == 3
    matured = on_due(state, day(31), Fixed(0.7), SWEEP)  # day 0.5 + 30 passed
    assert labels(matured) == [(day(0.5), 1, 0)] and (matured.examples[0].churn_p, matured.examples[0].loyalty_p) == (0.3, 1.5)


def test_sweeps_stop_after_the_silence_limit_and_need_a_purchase() -> None:
    cfg = EngineConfig(churn_horizon_days=30, sweep_silence_days=20, policy=PolicyConfig(control_share=0.0))
    browser = UserState("u1")
    assert feed(browser, Click(event_id="c", user_id="u1", ts=day(1), kind=ClickKind.SEARCH), cfg).due_ms is None
    state = UserState("u1")
    feed(state, purchase(0), cfg)
    assert on_due(state, day(8), Fixed(0.5), cfg).due_ms == day(16)
    assert on_due(state, day(16), Fixed(0.5), cfg).due_ms == day(30) + 1  # the next sweep (day 24) is past 20 days


def test_states_encoded_before_loyalty_labels_and_sweeps_still_load() -> None:
    import msgspec

    state = UserState("u1")
    feed(state, purchase(0), NO_SWEEP)
    fields = msgspec.msgpack.decode(dump_state(state))
    names = [f.name for f in msgspec.structs.fields(UserState)]
    old = fields[:names.index("swept_at")]  # the format before swept_at (and every field added after it)
    pending_at = names.index("pending")
    old[pending_at] = [point[:2] for point in old[pending_at]]  # (ts, features) only
    loaded = load_state(msgspec.msgpack.encode(old))
    assert loaded.swept_at is None and loaded.pending[0].days == 0 and loaded.pending[0].churn_p is None
    assert labels(on_due(loaded, day(30) + 1, Fixed(0.0), NO_SWEEP)) == [(day(0), 1, 0)]


def test_the_due_time_is_computed_again_only_when_actions_went_out() -> None:
    state = UserState("u1")
    streak(state, [0, 7, 14, 21])
    on_due(state, day(30) + 1, Fixed(0.9), CFG)
    fired = on_due(state, day(35), Fixed(0.9), CFG)
    assert len(fired.actions) == 1 and fired.due_ms == day(44) + 1 == due_at(state, CFG)
    went_out(state, fired, [], CFG)  # the guard rails let nothing out: nothing changed the due time
    assert fired.due_ms == day(44) + 1 and not fired.tally
    went_out(state, fired, fired.actions, CFG)  # the coupon's window matures 14 days and 1 hour later
    assert fired.due_ms == due_at(state, CFG) == day(44) + 1
    assert fired.tally.decisions["coupon|lapsed_after_streak|treatment"].decided == 1
    early = on_due(state, day(44) + 1, Fixed(0.9), CFG)  # the labels of day 14 mature: next, the window's end
    assert early.due_ms == day(49) + CFG.attribution.lateness_ms


def test_a_click_or_a_review_keeps_the_due_time_its_caller_knows_a_purchase_or_an_outcome_computes_it() -> None:
    state = UserState("u1")
    streak(state, [0, 7, 14, 21])
    known = due_at(state, CFG)
    search = Click(event_id="c", user_id="u1", ts=day(22), kind=ClickKind.SEARCH)
    assert on_event(state, search, day(22), CFG, due_before=known).due_ms == known == due_at(state, CFG)
    review = Review(event_id="r", user_id="u1", ts=day(22), order_id="o0", item_id="i1", rating=2)
    assert on_event(state, review, day(22), CFG, due_before=-7).due_ms == -7  # taken as given: not computed
    assert on_event(state, purchase(23), day(23), CFG, due_before=-7).due_ms == due_at(state, CFG) != -7
    unsubscribed = Outcome(action_id="a", user_id="u1", ts=day(24), outcome=OutcomeKind.UNSUBSCRIBED)
    assert on_event(state, unsubscribed, day(24), CFG, due_before=-7).due_ms == due_at(state, CFG) != -7
    assert on_event(UserState("u2"), Click(event_id="c", user_id="u2", ts=0, kind=ClickKind.SEARCH), 0, CFG,
                    due_before=Unknown.DUE).due_ms is None


def test_lapsed_streak_customer_gets_one_coupon_per_episode() -> None:
    state = UserState("u1")
    streak(state, [0, 7, 14, 21])  # a weekly buyer: lapse after max(14, 2 * 7) days
    due = feed(state, Click(event_id="c", user_id="u1", ts=day(22), kind=ClickKind.SEARCH), CFG).due_ms
    assert due == day(30) + 1  # day 0's labels mature first (points stored at days 0 and 14)
    assert on_due(state, due, Fixed(0.9), CFG).due_ms == day(35)
    assert on_due(state, day(34), Fixed(0.9), CFG).actions == []
    fired = on_due(state, day(35), Fixed(0.9), CFG)
    assert len(fired.actions) == 1
    action = fired.actions[0]
    assert action.kind == "coupon" and action.group == "treatment"
    assert action.reason.rule == "lapsed_after_streak" and action.reason.scores == {"churn": 0.9}
    assert action.reason.model_versions == {"churn": "fixed-1"}
    assert action.payload["percent_off"] == 10.0 and action.payload["code"].startswith("RS-")
    assert action.ts == "2026-02-05T00:00:00.000Z" and action.expires_at == "2026-02-19T00:00:00.000Z"
    assert schema_errors("retention-actions", decode_action_json(action)) == []
    # the same episode never fires twice; the label point still matures later
    assert on_due(state, day(36), Fixed(0.99), CFG).actions == []
    assert fired.due_ms == day(44) + 1  # the labels of the point stored at day 14
    # a purchase starts a new episode (gaps 7, 7, 7, 39: lapse after 2 * 15 days) with a new action id
    streak(state, [60])
    assert on_due(state, day(89), Fixed(0.9), CFG).actions == []
    second = on_due(state, day(90), Fixed(0.9), CFG).actions
    assert len(second) == 1 and second[0].action_id != action.action_id


def decode_action_json(action) -> dict:
    import json

    raw = encode_action(action)
    assert decode_action(raw) == action
    return json.loads(raw)


def test_reprocessing_the_same_decision_gives_the_same_action_id() -> None:
    def run() -> str:
        state = UserState("u1")
        streak(state, [0, 7, 14, 21])
        return on_due(state, day(40), Fixed(0.9), CFG).actions[0].action_id

    assert run() == run()


def test_low_churn_score_rechecks_daily_until_threshold() -> None:
    state = UserState("u1")
    streak(state, [0, 7, 14, 21])
    low = on_due(state, day(35), Fixed(0.2), CFG)
    assert low.actions == [] and low.due_ms == day(36)
    assert len(on_due(state, day(36), Fixed(0.7), CFG).actions) == 1


def test_no_coupon_without_a_streak_or_after_unsubscribe() -> None:
    short = UserState("u1")
    streak(short, [0, 7])
    assert on_due(short, day(60), Fixed(1.0), CFG).actions == []
    gone = UserState("u1")
    streak(gone, [0, 7, 14])
    fold(gone, Outcome(action_id="a", user_id="u1", ts=day(15), outcome=OutcomeKind.UNSUBSCRIBED))
    assert on_due(gone, day(60), Fixed(1.0), CFG).actions == []


def test_control_group_decisions_are_recorded_as_control() -> None:
    cfg = EngineConfig(policy=PolicyConfig(control_share=1.0))
    state = UserState("u1")
    for n in (0, 7, 14):
        feed(state, purchase(n), cfg)
    assert on_due(state, day(40), Fixed(0.9), cfg).actions[0].group == "control"


def test_due_queue_pops_each_user_once_at_its_latest_due_time() -> None:
    q = DueQueue()
    q.schedule("a", 10)
    q.schedule("a", 30)
    q.schedule("b", 20)
    q.schedule("c", 15)
    q.schedule("c", None)
    assert q.pop_due(25) == ["b"] and len(q) == 1 and q.next_due() == 30
    assert q.pop_due(30) == ["a"] and q.pop_due(10**15) == []


def test_churn_model_uses_prior_until_warm_then_learns_recency() -> None:
    model = ChurnModel(min_labels=20)
    assert model.score({"recency_days": 40.0, "gap_mean_days": 10.0}) == Score(recency_prior({"recency_days": 40.0, "gap_mean_days": 10.0}), "recency-prior", True)
    for i in range(2000):
        recency = float(i % 40)
        model.learn({"recency_days": recency, "gap_mean_days": 7.0}, recency > 20)
        if i % 100 == 99:
            model.close()  # a model period ends: the learner's share takes its step
    assert model.warm and model.version == "churn-logreg+2000" and model.weight > 0.5
    fresh = model.score({"recency_days": 2.0, "gap_mean_days": 7.0})
    stale = model.score({"recency_days": 38.0, "gap_mean_days": 7.0})
    assert not fresh.prior and fresh.value < 0.2 < 0.8 < stale.value
    x = {"recency_days": 2.0, "gap_mean_days": 7.0}
    assert fresh.value == pytest.approx(model.prior(x) + model.weight * (model.learned(x) - model.prior(x)))


def test_events_decoded_from_the_wire_fold_into_storable_state() -> None:
    import json

    from streams.domain.events import decode

    state = UserState("u1")
    raw = {"event_id": "w1", "user_id": "u1", "ts": "2026-01-02T00:00:00Z", "order_id": "o",
           "items": [{"item_id": "i", "quantity": 2.0, "unit_price": 5}], "total": 10, "currency": "EUR", "channel": "app"}
    event = decode("purchases", json.dumps(raw).encode())
    feed(state, event, CFG)
    feed(state, decode("reviews", b'{"event_id":"w2","user_id":"u1","ts":1767312000000,"item_id":"i","rating":5.0}'), CFG)
    restored = load_state(dump_state(state))
    assert restored == state and restored.last_purchase == day(1) and restored.rating_sum == 5


def test_churn_prior_is_the_bin_rate_of_learned_labels_until_warm() -> None:
    from models.baselines import RecencyBaseline

    model = ChurnModel(min_labels=1000, learned_prior=True)
    x = {"recency_days": 40.0, "gap_mean_days": 10.0}
    assert model.score({"recency_days": 0.0}).value == 1e-3  # the formula, clipped: never exactly 0
    for churned in (1, 1, 1, 0):
        model.learn(x, bool(churned))
    model.learn({"recency_days": 1.0}, False)
    # bin of 40 days: 3 of 4 churned, shrunk (5 pseudo-labels) toward the overall rate (3 + 1) / (5 + 2)
    expected = (3 + 5 * 4 / 7) / (4 + 5)
    assert model.score(x) == Score(pytest.approx(expected), "recency-prior+5", True)
    base = RecencyBaseline()
    for r, c in [(40.0, 1), (40.0, 1), (40.0, 1), (40.0, 0), (1.0, 0)]:
        base.learn_churn(r, c)
    assert model.score(x).value == pytest.approx(base.predict(40.0)[0])


def test_loyalty_prior_is_the_bin_mean_of_learned_days_until_warm() -> None:
    model = LoyaltyModel(horizon_days=30, min_labels=1000, learned_prior=True)
    assert model.score({"recency_days": 0.0, "gap_mean_days": 10.0, "purchases": 3.0}) == Score(3.0, "recency-prior", True)
    for days in (4, 2):
        model.learn({"recency_days": 2.0}, days)
    model.learn({"recency_days": 90.0}, 0)
    # bin of 2 days: mean 3 over 2 labels, shrunk toward the overall mean 2
    assert model.score({"recency_days": 2.0}) == Score(pytest.approx((6 + 5 * 2) / 7), "recency-prior+3", True)


def test_loyalty_learner_predictions_are_clipped_to_the_most_days_seen() -> None:
    model = LoyaltyModel(horizon_days=30, min_labels=1, kind="linear")
    for i in range(300):
        recency = float(i % 10)
        model.learn({"recency_days": recency}, int(recency // 5))  # 0 or 1 purchase day
    assert model.max_days == 1
    raw = model.pipeline.predict_one({"recency_days": 1e9})
    assert raw > 1.0  # the linear learner extrapolates past anything seen ...
    assert model.learned({"recency_days": 1e9}) == 1.0  # ... its prediction does not
    assert model.learned({"recency_days": -1e9}) >= 0.0


def test_gate_keeps_the_prior_while_the_learner_loses_to_it() -> None:
    # days peak in the middle recency bin: the recency bins fit exactly, a linear model cannot
    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="linear", learned_prior=True)
    for i in range(600):
        recency = (1.0, 10.0, 100.0)[i % 3]
        model.learn({"recency_days": recency}, 5 if recency == 10.0 else 0)
        if i % 30 == 29:
            model.close()
    gate = model.gate.report()
    assert model.labels >= model.min_labels and gate["prior_loss"] < gate["learner_loss"] and model.weight == 0.0
    score = model.score({"recency_days": 10.0})
    assert score.prior and score.version == "recency-prior+600"
    assert score.value == pytest.approx(model.bins.predict(10.0)[1]) and score.value > 4.9


def test_gate_hands_over_once_the_learner_beats_the_prior() -> None:
    # purchase days depend on the usual gap, which the recency bins do not see
    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="linear")
    for i in range(3000):
        gap = (2.0, 50.0)[i % 2]
        model.learn({"recency_days": 10.0, "gap_mean_days": gap}, 4 if gap < 10 else 0)
        if i % 100 == 99:
            model.close()
    gate = model.gate.report()
    assert model.warm and model.version == "loyalty-linear+3000" and gate["learner_loss"] < gate["prior_loss"]
    score = model.score({"recency_days": 10.0, "gap_mean_days": 2.0})
    assert not score.prior and score.value > 3.5


def test_a_vector_function_given_to_the_engine_computes_every_model_vector_of_the_step() -> None:
    """A worker passes the engine a vector that shares the step's features with its rows: the
    scoring points and the lapse check are the default vector's, and it is the one asked."""
    asked: list[int] = []

    def vector(state: UserState, now: int) -> list[float]:
        asked.append(now)
        return feature_vector(state, now, SWEEP.state)

    shared, plain = UserState("u1"), UserState("u1")
    for n in (0, 7, 14, 21):
        steps = [on_event(s, purchase(n), day(n), SWEEP, churn=Fixed(0.9), loyalty=Fixed(1.0), vector=v)
                 for s, v in ((shared, vector), (plain, None))]
        assert steps[0].points == steps[1].points
    assert asked == [day(n) for n in (0, 7, 14, 21)]
    kinds = []
    for t in (day(29), day(35), day(44) + 1):  # a sweep, the lapse check (a coupon), a maturity and a sweep
        asked.clear()
        ours = on_due(shared, t, Fixed(0.9), SWEEP, Fixed(1.0), vector=vector)
        theirs = on_due(plain, t, Fixed(0.9), SWEEP, Fixed(1.0))
        assert (ours.points, ours.examples, ours.actions, ours.due_ms) == (theirs.points, theirs.examples, theirs.actions, theirs.due_ms)
        assert asked == ([t] if ours.points or ours.churn is not None else [])
        kinds.append((bool(ours.points), ours.churn is not None, len(ours.actions), bool(ours.examples)))
    assert kinds == [(True, False, 0, False), (False, True, 1, True), (True, False, 0, True)]
    assert dump_state(shared) == dump_state(plain)
