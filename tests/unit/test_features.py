"""Per-user features over event-time windows: each feature with explicit timestamps, and
the property that arrival order within the allowed lateness and duplicates change nothing."""

from __future__ import annotations

import random
import statistics

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.events import Click, ClickKind, Item, Purchase, Review, UserEvent
from streams.domain.features import CLICK_WINDOWS, FEATURE_NAMES, FEATURES, MODEL_FEATURES, features, features_markdown, feature_vector
from streams.domain.state import Applied, StateConfig, UserState, advance, apply_event, dump_state, load_state
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR
from streams.domain.windows import CLICK_KINDS, COLUMNS, WINDOWS, Tiles

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday
CFG = StateConfig(allowed_lateness_ms=6 * MS_PER_HOUR, cart_timeout_ms=24 * MS_PER_HOUR, session_gap_ms=30 * 60_000)
MIN = 60_000


def at(days: float = 0, hours: float = 0, minutes: float = 0) -> int:
    return T0 + int(days * MS_PER_DAY + hours * MS_PER_HOUR + minutes * MIN)


def click(eid: str, ts: int, kind: str = "page_view", session: str | None = "s1", item: str | None = None, category: str | None = None) -> Click:
    return Click(event_id=eid, user_id="u", ts=ts, kind=ClickKind(kind), session_id=session, item_id=item, category=category)


def buy(eid: str, ts: int, total: float = 10.0) -> Purchase:
    return Purchase(event_id=eid, user_id="u", ts=ts, order_id=eid, items=[Item(item_id="i", quantity=1, unit_price=total)],
                    total=total, currency="EUR", channel="web")


def review(eid: str, ts: int, rating: int, text: str | None = None) -> Review:
    return Review(event_id=eid, user_id="u", ts=ts, item_id="i", rating=rating, text=text)


def toy_sentiment(event: UserEvent) -> float | None:
    """A fixed scorer for tests: a review text's rating, mapped to [-1, 1] (no text: None,
    as the worker passes it)."""
    return (event.rating - 3) / 2 if isinstance(event, Review) and event.text else None


def run(events: list[UserEvent], cfg: StateConfig = CFG) -> UserState:
    """Apply events in the given order, the clock being the latest event time seen so far."""
    state = UserState("u")
    clock = 0
    for event in events:
        apply_event(state, event, clock, cfg, toy_sentiment(event))
        clock = max(clock, event.ts)
    return state


def test_click_windows_count_by_tile_at_the_clock() -> None:
    state = run([click("a", at(0, 0, 1), "search"), click("b", at(0, 0, 50), "search"), click("c", at(3), "product_view"),
                 click("d", at(20), "add_to_cart"), click("e", at(60), "wishlist")])
    x = features(state, at(60, 0, 30))
    assert x["wishlist_1h"] == 1 and x["wishlist_24h"] == 1 and x["add_to_cart_90d"] == 1 and x["add_to_cart_30d"] == 0
    early = features(run([click("a", at(0, 0, 1), "search"), click("b", at(0, 0, 50), "search"), click("c", at(3), "product_view")]), at(3, 0, 1))
    assert early["search_7d"] == 2 and early["search_24h"] == 0 and early["product_view_1h"] == 1
    # the 1 h window is the 12 five-minute tiles ending with the clock's tile
    inside = features(run([click("a", at(0, 0, 1), "search")]), at(0, 0, 59))
    outside = features(run([click("a", at(0, 0, 1), "search")]), at(0, 1, 0))
    assert inside["search_1h"] == 1 and outside["search_1h"] == 0


def test_sessions_days_active_and_distinct_items() -> None:
    events = [click("a", at(0, 1), session="s1", item="i1", category="tents"), click("b", at(0, 2), session="s1", item="i2", category="tents"),
              click("c", at(1, 1), session="s2", item="i1", category="shoes"),
              click("d", at(2, 1), session=None), click("e", at(2, 1, 10), session=None), click("f", at(2, 2), session=None)]
    x = features(run(events), at(2, 3))
    assert x["sessions_7d"] == 4  # s1, s2, and two 30-min buckets without an id
    assert x["days_active_30d"] == 3
    assert x["distinct_items_viewed"] == 2 and x["distinct_categories_viewed"] == 2


def test_session_moves_to_its_earliest_event_when_that_arrives_late() -> None:
    late_first = run([click("b", at(0, 0, 10), session="s"), click("a", at(0, 0, 0) - 1, session="s")])  # 23:59:59.999 the day before
    assert features(late_first, at(0, 1))["sessions_24h"] == 1
    state = late_first
    assert state.tiles.window("7d", "sessions", at(0, 1)) == 1
    day_tiles = state.tiles.levels[2]
    assert sorted(row[7] for row in day_tiles.values()) == [0, 1] and day_tiles[(at(0) - 1) // MS_PER_DAY][7] == 1


def test_purchase_windows_lifetime_and_money_in_cents() -> None:
    events = [buy("p1", at(0), 10.10), buy("p2", at(100), 20.20), buy("p3", at(360), 0.3), buy("p4", at(364), 0.1)]
    x = features(run(events), at(365))
    assert (x["purchases_7d"], x["purchases_30d"], x["purchases_90d"], x["purchases_365d"]) == (2, 2, 2, 3)
    assert x["spend_7d"] == 0.4 and x["spend"] == 30.7 and x["purchases"] == 4
    assert x["avg_order_value"] == 30.7 / 4
    assert x["recency_days"] == 1.0 and x["first_seen_days"] == 365.0 and x["last_seen_days"] == 1.0


def test_gaps_are_those_of_the_purchases_in_time_order_whatever_the_arrival() -> None:
    state = run([buy("p1", at(0)), buy("p3", at(20)), buy("p2", at(20) - 5 * MS_PER_HOUR)])  # p2 5 h late: within 6 h
    x = features(state, at(20, 1))
    gaps = [20 - 5 / 24, 5 / 24]
    assert x["gap_mean_days"] == 10.0 and x["gap_std_days"] == pytest.approx(statistics.stdev(gaps))
    assert x["recency_days"] == 1 / 24
    assert abs(x["recency_over_gap"] - (1 / 24) / x["gap_mean_days"]) < 1e-12


def test_gap_features_compare_the_latest_gap_with_the_customers_rhythm_before_it() -> None:
    """A customer who bought every 10 days, then waited 40: the latest gap is 4 of the usual
    ones before it (drifting), and 25 days after it the silence spans 25 / 17.5 usual gaps;
    orders of one day are one purchase day, and the arrival order changes nothing."""
    events = [buy("p1", at(0, 9)), buy("p1b", at(0, 15)), buy("p2", at(10)), buy("p3", at(20)), buy("p4", at(30)), buy("p5", at(70, 8))]
    for order in (events, events[::-1], [events[3], events[0], events[5], events[2], events[1], events[4]]):
        x = features(run(order), at(95))
        assert (x["last_gap_days"], x["usual_gap_days"], x["gap_drift"]) == (40.0, 17.5, 4.0)
        assert x["overdue_ratio"] == 25 / 17.5
    steady = features(run([buy(f"p{i}", at(10 * i)) for i in range(5)]), at(45))
    assert (steady["gap_drift"], steady["usual_gap_days"], steady["overdue_ratio"]) == (1.0, 10.0, 0.5)


def test_gap_features_are_zero_where_there_are_too_few_purchase_days() -> None:
    one_day = features(run([buy("a", at(0, 1)), buy("b", at(0, 2))]), at(9))
    assert (one_day["last_gap_days"], one_day["usual_gap_days"], one_day["gap_drift"], one_day["overdue_ratio"]) == (0, 0, 0, 0)
    two_days = features(run([buy("a", at(0)), buy("b", at(6))]), at(9))
    assert (two_days["last_gap_days"], two_days["usual_gap_days"], two_days["gap_drift"], two_days["overdue_ratio"]) == (6, 6, 0, 0.5)
    assert features(UserState("u"), at(1))["overdue_ratio"] == 0


def test_gap_features_read_only_the_latest_purchases_kept() -> None:
    """Bounded: 40 daily purchases then a 30-day gap; only the latest 16 purchases are kept,
    so the rhythm is that of their 15 gaps (14 of one day, then 30)."""
    state = run([buy(f"p{i}", at(i)) for i in range(40)] + [buy("late", at(69))])
    assert len(state.purchase_times) == 16
    x = features(state, at(69))
    assert (x["last_gap_days"], x["usual_gap_days"], x["gap_drift"], x["overdue_ratio"]) == (30.0, 44 / 15, 30.0, 0.0)


def test_purchase_days_count_a_day_once_whatever_the_arrival_order() -> None:
    events = [buy("p1", at(0, 9)), buy("p2", at(0, 15)), buy("p3", at(30, 1)), buy("p4", at(30, 2)), buy("p5", at(31))]
    for order in (events, events[::-1], [events[2], events[0], events[4], events[1], events[3]]):
        x = features(run(order), at(32))
        assert (x["purchases"], x["purchase_days"]) == (5, 3)


def test_a_state_written_before_the_day_count_is_estimated_then_counted_on() -> None:
    state = run([buy("p1", at(0, 9)), buy("p2", at(0, 15)), buy("p3", at(5))])
    state.purchase_days = 0  # as a state encoded before the field existed loads
    assert features(state, at(6))["purchase_days"] == 2  # from the latest purchases' days
    apply_event(state, buy("p4", at(5, 3)), at(6), CFG)
    apply_event(state, buy("p5", at(9)), at(9), CFG)
    assert state.purchase_days == 3 and features(state, at(9))["purchase_days"] == 3


def test_an_event_beyond_the_lateness_counts_in_lifetime_figures_only() -> None:
    state = UserState("u")
    apply_event(state, buy("p1", at(10)), at(10), CFG)
    assert apply_event(state, buy("p0", at(9)), at(10), CFG) is Applied.LATE
    assert apply_event(state, click("c", at(9), "search"), at(10), CFG) is Applied.LATE
    x = features(state, at(10, 1))
    assert x["purchases"] == 2 and x["spend"] == 20.0 and x["purchases_7d"] == 1
    assert x["search_7d"] == 0 and x["gap_mean_days"] == 1.0  # a lifetime figure
    assert apply_event(state, buy("p0", at(9)), at(10), CFG) is Applied.DUPLICATE


def test_an_event_id_re_used_for_other_content_is_a_conflict_and_changes_nothing() -> None:
    state = UserState("u")
    assert apply_event(state, buy("p1", at(10), total=10.0), at(10), CFG) is Applied.OK
    before = dump_state(state)
    assert apply_event(state, buy("p1", at(10), total=10.0), at(10), CFG) is Applied.DUPLICATE
    assert apply_event(state, buy("p1", at(10), total=99.0), at(10), CFG) is Applied.CONFLICT
    assert apply_event(state, click("p1", at(10), "search"), at(10), CFG) is Applied.CONFLICT  # another kind of event
    assert dump_state(state) == before and not Applied.CONFLICT.counted and Applied.LATE.counted


def test_a_state_from_before_content_digests_tells_duplicates_only_for_events_it_has_digests_of() -> None:
    state = UserState("u")
    apply_event(state, buy("old", at(1)), at(1), CFG)
    state.recent_content = []  # as a state encoded before the field existed loads
    apply_event(state, buy("new", at(2)), at(2), CFG)
    assert apply_event(state, buy("old", at(1), total=99.0), at(2), CFG) is Applied.DUPLICATE  # unknown content: benefit of the doubt
    assert apply_event(state, buy("new", at(2), total=99.0), at(2), CFG) is Applied.CONFLICT
    for n in range(70):  # the windows stay aligned from the end as they roll
        apply_event(state, click(f"c{n}", at(3)), at(3), CFG)
    assert len(state.recent_ids) == len(state.recent_content) == 64
    assert apply_event(state, click("c69", at(3), "search"), at(3), CFG) is Applied.CONFLICT
    assert apply_event(state, click("c69", at(3)), at(3), CFG) is Applied.DUPLICATE


def test_cart_abandoned_without_a_purchase_within_the_timeout() -> None:
    bought = run([click("a", at(0, 10), "add_to_cart"), click("b", at(0, 11), "checkout_start"), buy("p", at(0, 12))])
    left = run([click("a", at(0, 10), "add_to_cart"), click("b", at(0, 11), "checkout_start"), buy("p", at(1, 11))])
    for state in (bought, left):
        assert features(state, at(1, 9))["carts_abandoned"] == 0  # the timeout has not passed yet
    assert features(bought, at(2))["carts_abandoned"] == 0
    x = features(left, at(2))
    assert x["carts_abandoned"] == 1 and x["carts_abandoned_7d"] == 1
    advance(left, at(3), CFG)  # finalized into the tiles and the lifetime count
    assert left.carts == [] and left.carts_abandoned == 1
    later = features(left, at(40))
    assert later["carts_abandoned_30d"] == 0 and later["carts_abandoned"] == 1


def test_searches_since_the_last_purchase() -> None:
    state = run([click("a", at(0), "search"), buy("p", at(1)), click("b", at(2), "search"), click("c", at(3), "search")])
    assert features(state, at(4))["searches_since_purchase"] == 2


def test_reviews_ratings_and_sentiment() -> None:
    state = run([review("r1", at(1), 5, "great"), review("r2", at(3), 1, "broken"), review("r3", at(2), 4)])
    x = features(state, at(4))
    assert x["reviews"] == 3 and x["rating_mean"] == 10 / 3 and x["last_rating"] == 1
    assert x["sentiment_mean"] == (1.0 - 1.0) / 2  # over the two reviews with a text
    assert x["last_sentiment"] == -1.0 and x["negative_reviews"] == 1


def test_every_feature_is_documented_and_the_model_sees_a_documented_subset() -> None:
    table = features_markdown()
    click_counts = {f"{k}_{w}" for k in (*CLICK_KINDS, "sessions") for w in CLICK_WINDOWS}
    assert "`<kind>_<window>`" in table and "`sessions_<window>`" in table and all(f"`{k}`" in table for k in CLICK_KINDS)
    assert all(f"`{name}`" in table for name in FEATURE_NAMES if name not in click_counts)
    assert click_counts <= set(FEATURE_NAMES) and len(FEATURES) == len(set(FEATURE_NAMES))
    state = run([buy("p", at(1)), click("a", at(2), "search")])
    assert len(feature_vector(state, at(3))) == len(MODEL_FEATURES)
    assert set(features(state, at(3))) == set(FEATURE_NAMES)


def test_state_stays_bounded_over_a_long_busy_history() -> None:
    """A daily buyer who clicks all day: the state's size stops growing with history."""

    def history(days: int) -> UserState:
        events: list[UserEvent] = []
        for d in range(days):
            events.append(buy(f"p{d}", at(d, 12), 42.5))
            events += [click(f"c{d}-{h}", at(d, h), ("page_view", "search", "add_to_cart")[h % 3], f"s{d}", f"i{h}") for h in range(0, 24, 2)]
            events.append(review(f"r{d}", at(d, 13), 4, "good"))
        return run(events)

    one_year, two_years = len(dump_state(history(365))), len(dump_state(history(730)))
    assert abs(two_years - one_year) < 64, (one_year, two_years)
    assert load_state(dump_state(history(30))) == history(30)


@st.composite
def user_histories(draw: st.DrawFn) -> list[UserEvent]:
    n = draw(st.integers(1, 60))
    horizon = draw(st.sampled_from([30 * MIN, 2 * MS_PER_HOUR, 3 * MS_PER_DAY, 40 * MS_PER_DAY, 400 * MS_PER_DAY]))
    times = sorted(draw(st.lists(st.integers(0, horizon), min_size=n, max_size=n)))
    events: list[UserEvent] = []
    for i, offset in enumerate(times):
        ts = T0 + offset
        kind = draw(st.sampled_from(["click", "click", "click", "purchase", "review"]))
        if kind == "click":
            events.append(click(f"e{i}", ts, draw(st.sampled_from([k.value for k in ClickKind])),
                                draw(st.sampled_from(["s1", "s2", "s3", None])), draw(st.sampled_from(["i1", "i2", None])),
                                draw(st.sampled_from(["c1", None]))))
        elif kind == "purchase":
            events.append(buy(f"e{i}", ts, draw(st.integers(0, 50_000)) / 100))
        else:
            events.append(review(f"e{i}", ts, draw(st.integers(1, 5)), draw(st.sampled_from(["ok", None]))))
    return events


@settings(max_examples=200, deadline=None)
@given(events=user_histories(), seed=st.integers(0, 2**32 - 1))
def test_any_order_within_the_lateness_and_duplicates_give_the_features_of_the_sorted_stream(
    events: list[UserEvent], seed: int
) -> None:
    rng = random.Random(seed)
    # Each event is delayed by at most the lateness: no event arrives later than allowed.
    delayed = sorted(events, key=lambda e: e.ts + rng.randint(0, CFG.allowed_lateness_ms))
    with_duplicates = [e for e in delayed for _ in range(2 if rng.random() < 0.2 else 1)]
    end = max(e.ts for e in events)
    sorted_state, shuffled_state = run(events), run(with_duplicates)
    bought = [e.ts // MS_PER_DAY for e in events if isinstance(e, Purchase)]
    if len(bought) <= 16:  # exact while a day's purchases are among the latest 16
        assert features(shuffled_state, end, CFG)["purchase_days"] == len(set(bought))
    for now in (end, end + CFG.allowed_lateness_ms, end + 2 * MS_PER_DAY, end + 100 * MS_PER_DAY):
        assert features(shuffled_state, now, CFG) == features(sorted_state, now, CFG)
        advance(sorted_state, now, CFG)
        advance(shuffled_state, now, CFG)
        assert features(shuffled_state, now, CFG) == features(sorted_state, now, CFG)
        assert shuffled_state.tiles == sorted_state.tiles  # every window, not only today's


def test_rfm_scores_rank_a_buyer_against_the_population() -> None:
    from streams.domain.population import Population, rfm_of

    population = Population()
    buyers = {}
    for i in range(10):  # buyer i: i + 1 purchases, the last on day i, spending 10 * (i + 1)
        buyers[i] = run([buy(f"b{i}-{n}", at(n), 10.0) for n in range(i + 1)])
        population.update(None, rfm_of(buyers[i]))
    x = features(buyers[9], at(10), CFG, population)
    assert (x["rfm_recency"], x["rfm_frequency"], x["rfm_monetary"]) == (5, 5, 5)
    y = features(buyers[0], at(10), CFG, population)
    assert (y["rfm_recency"], y["rfm_frequency"], y["rfm_monetary"]) == (1, 1, 1)
    assert features(buyers[4], at(10), CFG, population)["rfm_frequency"] == 3  # 4 of 10 below
    # a new purchase moves the buyer, and the population with them
    before = rfm_of(buyers[0])
    apply_event(buyers[0], buy("b0-late", at(10), 500.0), at(10), CFG)
    population.update(before, rfm_of(buyers[0]))
    z = features(buyers[0], at(10), CFG, population)
    assert (z["rfm_recency"], z["rfm_monetary"], population.size) == (5, 5, 10)
    assert features(run([click("c", at(1))]), at(2), CFG, population)["rfm_recency"] == 0  # never bought


def test_rfm_scores_are_the_share_of_buyers_strictly_below_through_any_changes() -> None:
    """The population ranks by bisecting running counts it keeps between changes: always
    what counting the buyers below in each histogram gives."""
    from streams.domain.population import Population, Rfm

    def counted(p: Population, values: Rfm) -> tuple[int, ...]:
        return tuple(1 + min(4, 5 * sum(c for k, c in h.items() if k < key) // p.size) for h, key in p._bins(values))

    rng, population, buyers = random.Random(5), Population(), {}
    for _ in range(3000):
        u = rng.randrange(200)
        new = Rfm(rng.randrange(300), rng.randrange(1, 90), rng.randrange(10**7))
        population.update(buyers.get(u), new)
        buyers[u] = new
        asked = Rfm(rng.randrange(-3, 305), rng.randrange(95), rng.randrange(2 * 10**7))
        assert population.scores(asked) == counted(population, asked)
        assert population.scores(new) == counted(population, new)


def test_the_sums_of_a_window_are_each_column_summed_alone() -> None:
    rng = random.Random(3)
    tiles, now = Tiles(), T0
    for n in range(600):  # late additions too, and tiles expiring on every level
        now += rng.randrange(4 * MS_PER_HOUR)
        tiles.add(now - rng.randrange(3 * MS_PER_HOUR), {rng.choice(COLUMNS): rng.randrange(1, 5)}, now)
        tiles.expire(now)
        if n % 60 == 0:
            for window in WINDOWS:
                assert tiles.sums(window, now) == [tiles.window(window, column, now) for column in COLUMNS]
    assert tiles.sums("1h", now + 400 * MS_PER_DAY) == [0] * len(COLUMNS)


def test_every_window_summed_at_once_and_active_tiles_read_as_column_by_column() -> None:
    rng = random.Random(4)
    tiles, now = Tiles(), T0
    for n in range(400):
        now += rng.randrange(6 * MS_PER_HOUR)
        tiles.add(now - rng.randrange(3 * MS_PER_DAY), {rng.choice(COLUMNS): rng.randrange(-1, 4)}, now)
        tiles.expire(now)
        if n % 40 == 0:
            assert tiles.all_sums(now) == {window: [tiles.window(window, c, now) for c in COLUMNS] for window in WINDOWS}
            for columns in (CLICK_KINDS, CLICK_KINDS[:3], ("search", "purchases"), COLUMNS[-2:]):
                level, k = WINDOWS["30d"]
                current = now // MS_PER_DAY
                expected = sum(1 for i, row in tiles.levels[level].items()
                               if current - k < i <= current and any(row[COLUMNS.index(c)] for c in columns))
                assert tiles.active_tiles("30d", columns, now) == expected


def test_an_expiry_that_skips_levels_whose_tile_did_not_move_keeps_exactly_the_tiles_of_a_full_one() -> None:
    """``Tiles.expire(now, since)`` (the state's previous clock) leaves the levels alone whose
    current tile is still the previous clock's: the same tiles, in the same order, as
    ``expire(now)`` looking at every level, and ``bump`` adds what ``add`` adds."""
    rng = random.Random(11)
    skipping, full, now = Tiles(), Tiles(), T0
    for _ in range(3000):  # steps of seconds (no level moves) to days (every level does), late events too
        since, now = now, now + rng.choice((rng.randrange(60_000), rng.randrange(2 * MS_PER_HOUR), rng.randrange(3 * MS_PER_DAY)))
        ts = now - rng.randrange(2 * MS_PER_HOUR)
        columns = tuple(rng.sample(range(len(COLUMNS)), rng.randrange(1, 3)))
        skipping.bump(ts, now, columns, 2)
        full.add(ts, {COLUMNS[c]: 2 for c in columns}, now)
        skipping.expire(now, since)
        full.expire(now)
        assert skipping.levels == full.levels and [list(level) for level in skipping.levels] == [list(level) for level in full.levels]
    assert any(len(level) < keep for level, keep in zip(full.levels, (12, 24, 30, 53)))  # tiles did expire
