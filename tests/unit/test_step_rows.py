"""One step's rows: the rules' row and the published row computed from one set of features."""

from __future__ import annotations

from models.bundle import Models
from streams.domain.events import Click, ClickKind, Item, Purchase
from streams.domain.loyalty import DEFAULT_TIERS, LoyaltyRanks, parse_tiers
from streams.domain.population import Population, rfm_of
from streams.domain.snapshots import StepRows, describe
from streams.domain.state import StateConfig, UserState, apply_event
from streams.domain.timestamps import MS_PER_DAY

T0 = 1_767_225_600_000


def buyer(user: str = "u") -> UserState:
    state = UserState(user)
    for day in range(3):
        apply_event(state, Click(event_id=f"c{day}", user_id=user, ts=T0 + day * MS_PER_DAY, kind=ClickKind.PAGE_VIEW,
                                 session_id=f"s{day}"), T0 + day * MS_PER_DAY, StateConfig())
    apply_event(state, Purchase(event_id="p", user_id=user, ts=T0 + 3 * MS_PER_DAY, order_id="o1", total=25.0, currency="EUR",
                                channel="web", items=[Item(item_id="i", quantity=1, unit_price=25.0)]),
                T0 + 3 * MS_PER_DAY, StateConfig())
    return state


def test_the_second_row_of_a_step_is_the_first_rows_features_and_answers() -> None:
    state, population, models, rows = buyer(), Population(), Models.fresh(), StepRows()
    population.update(None, rfm_of(state))
    now = T0 + 5 * MS_PER_DAY
    first = rows.scored(state, now, models, None, StateConfig(), population)
    assert rows.scored(state, now, models, None, StateConfig(), population) is first  # not computed again
    ranks = LoyaltyRanks()
    again = describe(state, now, models, ranks, parse_tiers(DEFAULT_TIERS), None, True, StateConfig(), population, scored=first)
    fresh = describe(state, now, models, LoyaltyRanks(), parse_tiers(DEFAULT_TIERS), None, True, StateConfig(), population)
    assert again == fresh
    assert again[0].features["recency_days"] == 2.0 and again[0].features["purchases"] == 1.0


def test_a_row_is_computed_again_for_another_time_population_models_churn_or_step() -> None:
    state, population, models, rows = buyer(), Population(), Models.fresh(), StepRows()
    now = T0 + 5 * MS_PER_DAY
    first = rows.scored(state, now, models, None, StateConfig(), population)
    later = rows.scored(state, now + MS_PER_DAY, models, None, StateConfig(), population)
    assert later is not first and later.values["recency_days"] == first.values["recency_days"] + 1
    population.update(None, rfm_of(state))  # a purchase moved the RFM population: the row's rfm_* change
    ranked = rows.scored(state, now + MS_PER_DAY, models, None, StateConfig(), population)
    assert ranked is not later and ranked.values["rfm_recency"] == 1.0 and later.values["rfm_recency"] == 0.0
    assert rows.scored(state, now + MS_PER_DAY, Models.fresh(), None, StateConfig(), population) is not ranked
    given = ranked.churn
    assert rows.scored(state, now + MS_PER_DAY, models, given, StateConfig(), population).churn is given
    current = rows.scored(state, now + MS_PER_DAY, models, given, StateConfig(), population)
    rows.clear()  # a new step: the same user at the same time may have changed
    assert rows.scored(state, now + MS_PER_DAY, models, given, StateConfig(), population) is not current


def test_the_engine_vector_and_the_rows_share_one_features_computation(monkeypatch) -> None:
    import streams.domain.snapshots as snapshots
    from streams.domain.features import feature_vector

    state, population, models, rows = buyer(), Population(), Models.fresh(), StepRows()
    population.update(None, rfm_of(state))
    now = T0 + 5 * MS_PER_DAY
    computed = []
    real = snapshots.features
    monkeypatch.setattr(snapshots, "features", lambda *args: computed.append(args[1]) or real(*args))
    vector = rows.vector(state, now, StateConfig(), population)
    assert vector == feature_vector(state, now, StateConfig())  # the RFM scores are no model input
    first = rows.scored(state, now, models, None, StateConfig(), population)
    given = models.churn.score(first.x)  # e.g. a lapse check's own score: only the churn answer differs
    second = rows.scored(state, now, models, given, StateConfig(), population)
    assert second.churn is given and second.segment == first.segment and second.values is first.values
    assert computed == [now]  # one features computation for the vector and both rows
    rows.vector(state, now + 1, StateConfig(), population)
    population.update(None, rfm_of(buyer("v")))
    rows.scored(state, now + 1, models, None, StateConfig(), population)
    assert computed == [now, now + 1, now + 1]  # another time, then another population: computed again
