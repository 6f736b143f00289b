"""Recommenders and their prequential evaluation, with explicit event times."""

from __future__ import annotations

import heapq
import random
from collections import Counter

import pytest

from models.reco import (
    PURCHASES_ONLY,
    WEIGHTS,
    CoOccurrence,
    FactorModel,
    Interaction,
    Popularity,
    RecentlySeen,
    default_recommender,
    _decayed,
    best,
    interactions,
    strongest,
)
from models.reco_eval import evaluate
from streams.domain.events import Click, ClickKind, Item, Purchase

T0 = 1_767_225_600_000  # 2026-01-01
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def learn_all(model, rows):
    """Feed (user, item, kind, ts) rows, giving each its user's earlier rows as history."""
    seen: dict[str, list[Interaction]] = {}
    for user, item, kind, ts in rows:
        history = seen.setdefault(user, [])
        interaction = Interaction(user, item, kind, ts)
        model.learn(interaction, tuple(history))
        history.append(interaction)


def click(user: str, ts: int, item: str | None, kind: ClickKind = ClickKind.PRODUCT_VIEW) -> Click:
    return Click(f"c-{user}-{ts}", user, ts, kind, item_id=item)


def buy(user: str, ts: int, *items: str) -> Purchase:
    return Purchase(f"p-{user}-{ts}", user, ts, f"o-{user}-{ts}", [Item(i, 1, 1.0) for i in items], 1.0, "EUR", "web")


# --- popularity -------------------------------------------------------------------------------


def test_popularity_ranks_by_mass_and_breaks_ties_by_item_id() -> None:
    pop = Popularity(weights=PURCHASES_ONLY)
    learn_all(pop, [("a", "b", "purchase", T0), ("b", "b", "purchase", T0), ("c", "a", "purchase", T0),
                    ("d", "c", "purchase", T0), ("e", "z", "product_view", T0)])  # fmt: skip
    assert pop.recommend("anyone", (), 10, (), T0) == ["b", "a", "c"]  # a and c tie: by id; views do not count


def test_popularity_forgets_what_left_the_window_in_event_time() -> None:
    pop = Popularity(window_ms=2 * DAY, weights=PURCHASES_ONLY)
    learn_all(pop, [("a", "old", "purchase", T0), ("a", "old", "purchase", T0 + 1)])
    learn_all(pop, [("b", "new", "purchase", T0 + DAY)])
    assert pop.recommend("x", (), 2, (), T0 + DAY + HOUR) == ["old", "new"]
    assert pop.recommend("x", (), 2, (), T0 + 3 * DAY) == ["new"]  # day 0's tile has left [day 1, day 3]
    assert pop.totals == {"new": 1.0}
    pop.learn(Interaction("c", "late", "purchase", T0))  # older than the window: ignored
    assert pop.recommend("x", (), 2, (), T0 + 3 * DAY) == ["new"]
    assert pop.recommend("x", (), 2, (), T0 + 5 * DAY) == []


def test_popularity_excludes_what_the_caller_says_was_bought() -> None:
    pop = Popularity(weights=WEIGHTS)
    learn_all(pop, [("a", "x", "purchase", T0), ("a", "y", "add_to_cart", T0), ("a", "z", "product_view", T0)])
    assert pop.recommend("a", (), 3, {"x"}, T0) == ["y", "z"]


# --- co-occurrence ----------------------------------------------------------------------------


def raw(**kwargs) -> CoOccurrence:
    """Summed kind-weighted votes, no seen items, no minimum history (the defaults are tested apart)."""
    settings = {"normalise": False, "self_weight": 0.0, "min_history": 1, "weights": WEIGHTS}
    return CoOccurrence(**{**settings, **kwargs})


def co_bought(model: CoOccurrence) -> None:
    """Three customers buy x and y together; z is bought more often, but alone."""
    rows = []
    for n, user in enumerate(("a", "b", "c")):
        t = T0 + n * HOUR
        rows += [(user, "x", "product_view", t), (user, "y", "purchase", t + MIN), (user, "x", "purchase", t + MIN)]
    rows += [(f"z{n}", "z", "purchase", T0 + n) for n in range(6)]
    learn_all(model, rows)


def test_cooccurrence_ranks_the_co_bought_item_first_and_fills_with_popularity() -> None:
    model = raw(popularity=Popularity(weights=PURCHASES_ONLY))
    co_bought(model)
    history = (Interaction("new", "x", "product_view", T0 + DAY),)
    assert model.recommend("new", history, 3, (), T0 + DAY) == ["y", "z", "x"]
    # (purchase + view) x purchase, 3 users, decayed by at most 2 hours of a 60-day half-life
    assert model.score("x", "y", T0 + 2 * HOUR) == pytest.approx(3 * (5 * 5 + 5 * 1), rel=1e-3)


def test_cooccurrence_excludes_bought_items_and_falls_back_to_popularity_for_unknown_users() -> None:
    model = raw(popularity=Popularity(weights=PURCHASES_ONLY))
    co_bought(model)
    history = (Interaction("u", "x", "purchase", T0 + DAY),)
    assert "y" not in model.recommend("u", history, 3, {"x", "y"}, T0 + DAY)
    assert model.recommend("u", history, 3, {"x", "y"}, T0 + DAY) == ["z"]
    assert model.recommend("stranger", (), 3, (), T0 + DAY) == ["z", "x", "y"]  # z 6, x 3, y 3 (tie by id)


def test_cooccurrence_pairs_only_within_the_pair_window_of_event_time() -> None:
    model = raw(pair_window_ms=30 * MIN)
    learn_all(model, [("a", "x", "product_view", T0), ("a", "y", "product_view", T0 + 30 * MIN),
                      ("a", "z", "product_view", T0 + 31 * MIN)])  # fmt: skip
    assert set(model.neighbours["x"]) == {"y"}
    assert set(model.neighbours["z"]) == {"y"}


def test_cooccurrence_scores_halve_every_half_life() -> None:
    model = raw(half_life_ms=10 * DAY, history_half_life_ms=10**15)
    learn_all(model, [("a", "x", "product_view", T0), ("a", "old", "product_view", T0)])
    learn_all(model, [("b", "x", "product_view", T0 + 20 * DAY), ("b", "new", "product_view", T0 + 20 * DAY)])
    model.popularity = Popularity()
    history = (Interaction("u", "x", "product_view", T0 + 20 * DAY),)
    assert model.recommend("u", history, 2, (), T0 + 20 * DAY) == ["new", "old"]
    assert model.score("x", "old", T0) == pytest.approx(1.0)
    assert model.score("x", "old", T0 + 20 * DAY) == pytest.approx(1.0 / 4)  # two half-lives
    model.learn(Interaction("c", "old", "product_view", T0 + 20 * DAY), (Interaction("c", "x", "product_view", T0 + 20 * DAY),))
    assert model.score("x", "old", T0 + 20 * DAY) == pytest.approx(1.0 / 4 + 1.0)
    assert model.score("old", "x", T0 + 30 * DAY) == pytest.approx((1.0 / 4 + 1.0) / 2)


def test_cooccurrence_keeps_at_most_twice_max_neighbours_per_item_and_the_strongest_survive() -> None:
    model = raw(max_neighbours=3)
    rows = [("fan", "hub", "product_view", T0), ("fan", "best", "purchase", T0 + 1)]
    rows += [(f"u{n}", item, "product_view", T0 + 2 + n) for n in range(10) for item in ("hub", f"n{n}")]
    learn_all(model, rows)
    assert len(model.neighbours["hub"]) <= 6
    assert "best" in model.neighbours["hub"]


# --- River matrix factorisation --------------------------------------------------------------


def test_factor_model_gives_popularity_to_unknown_users_and_bounds_the_users_it_keeps() -> None:
    model = FactorModel(max_users=2, seed=1)
    learn_all(model, [(u, "x", "purchase", T0 + n) for n, u in enumerate("abc")] + [("c", "y", "purchase", T0 + 9)])
    assert list(model.users) == ["b", "c"]
    assert "a" not in model.mf.u_latents and "a" not in model.mf.u_biases
    assert model.recommend("a", (), 2, (), T0 + 10) == ["x", "y"]  # popularity: x 3 purchases, y 1
    assert model.recommend("c", (), 2, {"x"}, T0 + 10) == ["y"]


# --- interactions and evaluation -------------------------------------------------------------


def test_interactions_of_events() -> None:
    assert interactions(click("u", T0, "i", ClickKind.ADD_TO_CART)) == [Interaction("u", "i", "add_to_cart", T0)]
    assert interactions(click("u", T0, None, ClickKind.PAGE_VIEW)) == []
    assert interactions(click("u", T0, "i", ClickKind.REMOVE_FROM_CART)) == []
    assert interactions(buy("u", T0, "a", "b", "a")) == [Interaction("u", "a", "purchase", T0),
                                                         Interaction("u", "b", "purchase", T0)]  # fmt: skip


def test_hit_rate_on_a_hand_made_stream() -> None:
    """Two customers buy x then y; the third is asked after buying x: y is a hit, x may not be shown."""
    stream = [
        buy("a", T0, "x"), buy("a", T0 + DAY, "y"),  # a: new miss (nothing known), returning miss (y unknown)
        buy("b", T0 + 2 * DAY, "x"),                 # b: new, popularity x: hit
        buy("b", T0 + 3 * DAY, "y"),                 # b: returning, x excluded, co-occurrence/popularity y: hit
        buy("c", T0 + 4 * DAY, "z"),                 # c: new, list [x, y]: miss
        buy("c", T0 + 5 * DAY, "x", "w"),            # c: returning, list has x: hit
    ]  # fmt: skip
    tallies = evaluate(stream, {"co": raw(pair_window_ms=2 * DAY, popularity=Popularity(weights=PURCHASES_ONLY))})
    co = tallies["co"]
    assert (co.asked, co.hits) == ({"all": 6, "new": 3, "returning": 3}, {"all": 3, "new": 1, "returning": 2})
    assert co.rate("all") == 0.5
    assert tallies["reachable"].hits == {"all": 6, "new": 3, "returning": 3}


def test_the_current_session_is_not_known_when_the_question_is_asked() -> None:
    """A click in the purchase's own session must not reach the history; an earlier session does."""
    seen = raw(self_weight=1.0, popularity=Popularity(weights=PURCHASES_ONLY))
    stream = [
        click("u", T0, "earlier"),
        click("v", T0, "earlier"),
        click("u", T0 + DAY, "cart", ClickKind.ADD_TO_CART),  # a new session (gap > 30 min) ...
        buy("v", T0 + DAY, "earlier"),                        # v bought what an earlier session showed: a hit
        buy("u", T0 + DAY + 5 * MIN, "cart"),                 # ... whose purchase is asked before it is known
    ]
    tallies = evaluate(stream, {"seen": seen}, session_gap_ms=30 * MIN)
    assert tallies["seen"].hits == {"all": 1, "new": 1, "returning": 0}
    assert tallies["seen"].asked["all"] == 2


def test_already_bought_items_count_neither_for_hits_nor_for_reachable() -> None:
    stream = [buy("a", T0, "x"), buy("a", T0 + DAY, "x")]
    tallies = evaluate(stream, {"pop": Popularity(weights=PURCHASES_ONLY)})
    assert tallies["pop"].hits["returning"] == 0  # x was popular, but bought before: never shown
    assert tallies["reachable"].hits == {"all": 1, "new": 1, "returning": 0}


def test_normalised_votes_stop_a_much_touched_item_from_outvoting_the_history() -> None:
    model = raw(popularity=Popularity())
    model.neighbours, model.origin_ms = {"hub": {"p": 100.0, "s": 100.0}, "niche": {"q": 10.0}}, T0
    history = (Interaction("u", "hub", "product_view", T0), Interaction("u", "niche", "product_view", T0))
    assert model.recommend("u", history, 3, (), T0) == ["p", "s", "q"]  # 100, 100, 10
    model.normalise = True
    assert model.recommend("u", history, 3, (), T0) == ["q", "p", "s"]  # 1, 0.5, 0.5


def test_too_short_a_history_gets_popularity() -> None:
    model = raw(min_history=3, popularity=Popularity(weights=PURCHASES_ONLY))
    co_bought(model)
    history = (Interaction("u", "x", "product_view", T0 + DAY), Interaction("u", "x", "add_to_cart", T0 + DAY))
    assert model.recommend("u", history, 2, (), T0 + DAY) == ["z", "x"]  # one distinct item: popularity
    longer = (*history, Interaction("u", "w1", "product_view", T0), Interaction("u", "w2", "product_view", T0))
    assert model.recommend("u", longer, 1, (), T0 + DAY) == ["y"]


def test_recently_seen_ranks_unbought_history_by_recency_then_popularity() -> None:
    model = RecentlySeen(half_life_ms=DAY, popularity=Popularity(weights=PURCHASES_ONLY))
    learn_all(model, [("z", "top", "purchase", T0)])
    history = (Interaction("u", "old", "product_view", T0), Interaction("u", "new", "product_view", T0 + DAY),
               Interaction("u", "got", "product_view", T0 + DAY))  # fmt: skip
    assert model.recommend("u", history, 3, {"got"}, T0 + DAY) == ["new", "old", "top"]


def test_the_default_shows_seen_items_then_their_neighbours_and_popularity_below_three_items() -> None:
    model = default_recommender()
    rows = [(f"c{n}", item, "product_view", T0 + n * HOUR) for n in range(3) for item in ("x", "y")]
    rows += [("d", "x", "product_view", T0), ("d", "w", "product_view", T0)]
    rows += [(f"p{n}", "pop", "purchase", T0 + n) for n in range(5)]
    learn_all(model, rows)
    now = T0 + 10 * DAY
    history = tuple(Interaction("u", item, "product_view", T0 + 5 * DAY) for item in ("x", "a", "b"))
    # x's vote: 1 to itself (seen), 3/4 to y and 1/4 to w (its neighbours, normalised); then popularity
    assert model.recommend("u", history, 4, {"a", "b"}, now) == ["x", "y", "w", "pop"]
    assert model.recommend("u", history[:2], 2, (), now) == ["pop", "x"]  # two distinct items: popularity


def test_a_late_interaction_adds_its_weight_decayed_to_the_time_the_score_is_stored_at() -> None:
    model = raw(half_life_ms=10 * DAY)
    model.learn(Interaction("a", "x", "product_view", T0 + 20 * DAY), (Interaction("a", "y", "product_view", T0 + 20 * DAY),))
    model.learn(Interaction("b", "x", "product_view", T0 + 10 * DAY), (Interaction("b", "y", "product_view", T0 + 10 * DAY),))
    assert model.score("x", "y", T0 + 20 * DAY) == pytest.approx(1.0 + 0.5)
    assert model.score("y", "x", T0 + 10 * DAY) == pytest.approx(2.0 + 1.0)


class EagerCoOccurrence(CoOccurrence):
    """Co-occurrence as it was written before its hot loops were written in line: every
    pair's score decayed by a call of ``_decayed``, and pruned by ``heapq.nlargest``."""

    def learn(self, interaction, history) -> None:  # type: ignore[no-untyped-def]
        self.popularity.learn(interaction, history)
        weight = self.weights.get(interaction.kind, 0.0)
        if not weight:
            return
        t, item = interaction.ts_ms, interaction.item_id
        for other, w in self.partners(interaction, history).items():
            self._add(item, other, weight * w, t)
            self._add(other, item, weight * w, t)

    def _add(self, item, other, weight, t) -> None:  # type: ignore[no-untyped-def]
        row = self.neighbours.setdefault(item, {})
        value, since = row.get(other, (0.0, t))
        if t >= since:
            row[other] = (_decayed(value, since, t, self.half_life_ms) + weight, t)
        else:
            row[other] = (value + _decayed(weight, t, since, self.half_life_ms), since)
        if len(row) > 2 * self.max_neighbours:
            kept = heapq.nlargest(
                self.max_neighbours, row.items(), key=lambda kv: _decayed(kv[1][0], kv[1][1], t, self.half_life_ms)
            )
            self.neighbours[item] = dict(kept)

    def recommend(self, user_id, history, k, exclude, now_ms):  # type: ignore[no-untyped-def]
        votes: dict[str, float] = {}
        for past in history:
            w = _decayed(self.weights.get(past.kind, 0.0), past.ts_ms, now_ms, self.history_half_life_ms)
            votes[past.item_id] = max(w, votes.get(past.item_id, 0.0))
        scores: Counter[str] = Counter()
        for source, vote in votes.items() if len(votes) >= self.min_history else ():
            scores[source] += self.self_weight * vote
            row = {o: _decayed(v, s, now_ms, self.half_life_ms) for o, (v, s) in self.neighbours.get(source, {}).items()}
            if self.normalise and row:
                vote /= sum(row.values())
            for other, value in row.items():
                scores[other] += vote * value
        ranked = heapq.nsmallest(k, ((-s, i) for i, s in scores.items() if s > 0 and i not in exclude))
        out = [item for _, item in ranked]
        return out + self.popularity.recommend(user_id, history, k - len(out), {*exclude, *out}, now_ms)


def test_scores_kept_at_the_origin_are_the_eager_decayed_scores_and_rank_alike() -> None:
    """Scores stored at the model's origin read back as the eager version's decayed scores,
    rows keep the same neighbours, and recommendations are the same lists. (In time order: the
    eager version prunes a row at a late interaction's time without raising the entries stored
    at later times to it, so it may keep another neighbour than the true strongest.)"""
    rng = random.Random(5)
    shared, eager = CoOccurrence(max_neighbours=4), EagerCoOccurrence(max_neighbours=4)
    items = [f"i{n}" for n in range(40)]
    rows = []
    for n in range(3000):  # pruning (many neighbours), ties (equal times: two in three share an hour)
        rows.append((f"u{rng.randrange(60)}", rng.choice(items), rng.choice(list(WEIGHTS)), T0 + (n // 3) * HOUR))
    learn_all(shared, rows)
    learn_all(eager, rows)
    now = T0 + 3000 * HOUR
    assert {item: set(row) for item, row in shared.neighbours.items()} == {item: set(row) for item, row in eager.neighbours.items()}
    for item, row in eager.neighbours.items():
        for other, (value, since) in row.items():
            assert shared.score(item, other, now) == pytest.approx(_decayed(value, since, now, shared.half_life_ms), rel=1e-9)
    for user in range(60):
        history = tuple(Interaction(f"u{user}", rng.choice(items), "product_view", now - rng.randrange(90) * DAY) for _ in range(8))
        assert shared.recommend(f"u{user}", history, 10, {history[0].item_id}, now) == eager.recommend(
            f"u{user}", history, 10, {history[0].item_id}, now)


def test_the_origin_moves_forward_before_scores_overflow_and_keeps_their_values() -> None:
    model = raw(half_life_ms=DAY)
    model.learn(Interaction("a", "x", "product_view", T0), (Interaction("a", "y", "product_view", T0),))
    later = T0 + 300 * DAY  # 300 half-lives: 2 ** 300 is past the rebase point
    model.learn(Interaction("b", "x", "product_view", later), (Interaction("b", "z", "product_view", later),))
    fresh = raw(half_life_ms=DAY)
    fresh.learn(Interaction("a", "x", "product_view", T0), (Interaction("a", "y", "product_view", T0),))
    assert fresh.score("x", "y", later) == pytest.approx(2.0**-300) and fresh.origin_ms == T0  # a read moves nothing
    assert model.origin_ms == later
    assert model.score("x", "z", later) == 1.0
    assert model.score("x", "y", later) == pytest.approx(2.0**-300)
    assert model.recommend("u", (Interaction("u", "x", "product_view", later),) * 3, 1, {"x"}, later) == ["z"]


def test_strongest_keeps_the_largest_scores_with_ties_in_row_order() -> None:
    row = {"a": 1.0, "b": 2.0, "c": 1.0, "d": 1.0, "e": 0.5}
    assert list(strongest(row, 3)) == ["b", "a", "c"]
    assert strongest(row, 3) == {"b": 2.0, "a": 1.0, "c": 1.0}


def test_best_and_strongest_answer_what_the_heapq_forms_they_replaced_answer() -> None:
    """``best`` makes tuples only for the items that can be in the answer, ``strongest`` is one
    stable sort: on random rows with many ties, zero and negative scores, exclusions that are
    and are not scored, and every k from 0 past the row's size, the same lists as the plain
    ``heapq`` forms (which the worker's recommendations were made with before)."""
    from operator import itemgetter

    rng = random.Random(5)
    items = [f"i{j}" for j in range(15)]
    for _ in range(5000):
        scores = {i: rng.choice([0.0, -1.0, 1e-9, 2e-9, 1.0, 1.0, 2.0, rng.uniform(-1, 3)]) for i in rng.sample(items, rng.randint(0, 12))}
        exclude = set(rng.sample(items, rng.randint(0, 6)))
        k, above = rng.randint(0, 14), rng.choice([0.0, 1e-9])
        eligible = ((-s, i) for i, s in scores.items() if s > above and i not in exclude)
        assert best(scores, k, exclude, above) == [i for _, i in heapq.nsmallest(k, eligible)]
        assert list(strongest(scores, k).items()) == heapq.nlargest(k, scores.items(), key=itemgetter(1))


def test_evaluate_reco_command_prints_every_model_and_the_ceiling() -> None:
    from typer.testing import CliRunner

    from models.reco_eval import candidates
    from streams.cli import app

    result = CliRunner().invoke(app, ["evaluate-reco", "--customers", "30", "--days", "20", "--seed", "3"],
                                env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in (*candidates(), "ceiling: a not-yet-bought item"):
        assert name in result.output
    assert "Hit rate@10 on the next purchase" in result.output
