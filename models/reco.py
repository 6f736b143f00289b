"""Recommendations learned from the stream: popularity, item-to-item co-occurrence, River MF.

Every model follows one small protocol (:class:`Recommender`): ``learn(interaction,
history)`` and ``recommend(user_id, history, k, exclude, now_ms)``. Time is always the
event time passed in (``Interaction.ts_ms``, ``now_ms``), never the wall clock.

Per-user memory belongs to the user's state in the live system, not to the model: the
caller passes the user's recent interactions (``history``, oldest first, bounded by the
caller, e.g. the last 50) and the items the user already bought (``exclude``). The
co-occurrence and popularity models keep nothing per user. :class:`FactorModel` (River's
``reco.BiasedMF``) needs a latent vector per user; it keeps at most ``max_users`` of them
and forgets the least recently active user beyond that.

- :class:`Popularity`: interaction mass per item over a sliding event-time window (daily
  tiles); the baseline, and the fallback of the other models for unknown users and for
  filling short lists.
- :class:`CoOccurrence`: items interacted with by the same user within ``pair_window_ms``
  of each other (30 days by default) are neighbours; scores decay with a
  half-life in event time; at most ``max_neighbours`` per item are kept.
- :class:`FactorModel`: River ``reco.BiasedMF`` on implicit feedback (y=1 for an
  interaction, y=0 for ``negatives`` sampled items).

>>> pop = Popularity()
>>> for user, item in [("a", "x"), ("b", "x"), ("b", "y")]:
...     pop.learn(Interaction(user, item, "purchase", 0), ())
>>> pop.recommend("new-user", (), k=2, exclude=(), now_ms=0)
['x', 'y']
>>> pop.recommend("b", (), k=2, exclude={"x"}, now_ms=0)
['y']
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter, OrderedDict
from collections.abc import Collection, Mapping, Sequence
from operator import itemgetter
from typing import NamedTuple, Protocol

from river import optim, reco

from streams.domain.events import Click, Purchase

MINUTE_MS = 60_000
DAY_MS = 86_400_000

#: Weight of each kind of interaction with an item (click kinds of the contract, and purchases).
WEIGHTS: Mapping[str, float] = {"product_view": 1.0, "wishlist": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
PURCHASES_ONLY: Mapping[str, float] = {"purchase": 1.0}
#: Every kind of item interaction alike: what co-occurrence uses by default (measured best).
EQUAL: Mapping[str, float] = dict.fromkeys(WEIGHTS, 1.0)


class Interaction(NamedTuple):
    """One user touching one item at an event time (``kind``: a click kind or ``purchase``)."""

    user_id: str
    item_id: str
    kind: str
    ts_ms: int


def interactions(event: object) -> list[Interaction]:
    """The item interactions an event carries: a click on an item, or each line of a purchase.

    Reviews carry no new interest (the item was bought) and other events no item.

    >>> from streams.domain.events import decode
    >>> interactions(decode("clicks", b'{"event_id":"e","user_id":"u","ts":1767225600000,"kind":"add_to_cart","item_id":"i1"}'))
    [Interaction(user_id='u', item_id='i1', kind='add_to_cart', ts_ms=1767225600000)]
    """
    if isinstance(event, Click):
        if event.item_id is None or event.kind.value not in WEIGHTS:
            return []
        return [Interaction(event.user_id, event.item_id, event.kind.value, int(event.ts))]
    if isinstance(event, Purchase):
        items = dict.fromkeys(line.item_id for line in event.items)  # once per order, in order
        return [Interaction(event.user_id, item, "purchase", int(event.ts)) for item in items]
    return []


class Recommender(Protocol):
    """What every recommendation model answers to."""

    name: str

    def learn(self, interaction: Interaction, history: Sequence[Interaction]) -> None:
        """Learn one interaction; ``history`` is the same user's earlier ones, oldest first."""

    def recommend(
        self, user_id: str, history: Sequence[Interaction], k: int, exclude: Collection[str], now_ms: int
    ) -> list[str]:
        """Up to ``k`` item ids, best first, none of them in ``exclude``."""


class Popularity:
    """Weighted interactions per item over the last ``window_ms`` of event time.

    Counts live in tiles of ``tile_ms``; a tile leaves the window as a whole once the clock
    (the latest ``ts_ms`` learned, or ``now_ms`` asked) is ``window_ms`` past its end.
    Memory: one counter per item per tile in the window. Events older than the window are
    ignored.
    """

    def __init__(
        self, window_ms: int = 14 * DAY_MS, tile_ms: int = DAY_MS, weights: Mapping[str, float] = WEIGHTS
    ) -> None:
        if window_ms < tile_ms or tile_ms <= 0:
            raise ValueError("need 0 < tile_ms <= window_ms")
        self.name = "popularity"
        self.window_ms, self.tile_ms, self.weights = window_ms, tile_ms, weights
        self.tiles: dict[int, Counter[str]] = {}
        self.totals: Counter[str] = Counter()
        self.clock = -(1 << 62)
        self._expired: int | None = None  #: the newest tile index dropped by the last expiry

    def learn(self, interaction: Interaction, history: Sequence[Interaction] = ()) -> None:
        weight = self.weights.get(interaction.kind, 0.0)
        self._advance(interaction.ts_ms)
        tile = interaction.ts_ms // self.tile_ms
        if not weight or tile <= self._oldest_expired():
            return
        counts = self.tiles.get(tile)
        if counts is None:
            counts = self.tiles[tile] = Counter()
        item = interaction.item_id  # (what += on a Counter does, without its __missing__ call)
        counts[item] = counts.get(item, 0) + weight
        self.totals[item] = self.totals.get(item, 0) + weight

    def recommend(
        self, user_id: str, history: Sequence[Interaction], k: int, exclude: Collection[str], now_ms: int
    ) -> list[str]:
        self._advance(now_ms)
        return self.top(k, exclude)

    def top(self, k: int, exclude: Collection[str] = ()) -> list[str]:
        """The ``k`` items of most mass in the window, ties by item id."""
        return best(self.totals, k, exclude, 1e-9)

    def _oldest_expired(self) -> int:
        return (self.clock - self.window_ms) // self.tile_ms - 1  # ended window_ms or more before the clock

    def _advance(self, now_ms: int) -> None:
        if now_ms <= self.clock:
            return
        self.clock = now_ms
        expired = self._oldest_expired()
        if expired == self._expired:
            return  # nothing learned since the last expiry is this old: no tile to drop
        self._expired = expired
        for tile in [t for t in self.tiles if t <= expired]:
            self.totals.subtract(self.tiles.pop(tile))
            for item in [i for i, mass in self.totals.items() if mass <= 1e-9]:
                del self.totals[item]


def _decayed(value: float, since_ms: int, now_ms: int, half_life_ms: float) -> float:
    return value * 0.5 ** (max(0, now_ms - since_ms) / half_life_ms)


def strongest(row: dict[str, float], n: int) -> dict[str, float]:
    """The ``n`` entries of largest score, strongest first, ties in row order.

    What ``heapq.nlargest(n, row.items(), key=itemgetter(1))`` answers (its documented
    equivalent: a reverse sort is stable), at under half its cost on a full row (101 entries).

    >>> strongest({"a": 1.0, "b": 4.0, "c": 1.0, "d": 2.0}, 2)
    {'b': 4.0, 'd': 2.0}
    >>> strongest({"a": 1.0, "b": 4.0, "c": 1.0, "d": 2.0}, 3)
    {'b': 4.0, 'd': 2.0, 'a': 1.0}
    """
    return dict(sorted(row.items(), key=itemgetter(1), reverse=True)[:n])


def best(scores: Mapping[str, float], k: int, exclude: Collection[str], above: float) -> list[str]:
    """The ``k`` items of highest score above ``above`` and not in ``exclude``, ties by item id.

    The same list as ``heapq.nsmallest(k, ((-s, i) for i, s in scores.items() if s > above
    and i not in exclude))``, but the tuples are made only for the items scoring at least the
    ``k + len(exclude)``-th highest score: an item below it has ``k`` eligible items above it
    (at most ``len(exclude)`` of those above it are excluded), so it cannot be in the answer.

    >>> best({"a": 1.0, "b": 3.0, "c": 3.0, "d": 2.0, "e": 0.0}, 2, {"b"}, 0.0)
    ['c', 'd']
    """
    if k <= 0:
        return []
    if len(scores) > k + len(exclude):
        floor = heapq.nlargest(k + len(exclude), scores.values())[-1]
        if floor > above:
            above_floor = [(-s, i) for i, s in scores.items() if s >= floor and i not in exclude]
            return [item for _, item in heapq.nsmallest(k, above_floor)]
    return [item for _, item in heapq.nsmallest(k, [(-s, i) for i, s in scores.items() if s > above and i not in exclude])]


#: Scores are kept multiplied by 2 ** (age in half-lives since the model's origin); past this
#: exponent the origin moves forward (every score divided once), long before floats overflow.
_REBASE_AT = 256.0


class CoOccurrence:
    """Item-to-item: items one user touched within ``pair_window_ms`` of each other are neighbours.

    Learning ``(u, i, t)`` adds ``w(i) * w(j)`` to the pair ``(i, j)`` for every other item
    ``j`` in u's history at or after ``t - pair_window_ms`` (each item once, at its heaviest
    kind). Pair scores decay with ``half_life_ms`` of event time, so old tastes fade. Each
    item keeps its ``max_neighbours`` strongest neighbours whenever it has more than twice
    that many: memory is at most items × 2 ``max_neighbours`` pairs, whatever the number of
    users or events.

    Every score decays at the same rate, so a score is stored as what it will be worth at
    the model's origin time (``origin_ms``): ``w * 2 ** ((t - origin) / half_life)`` for a
    weight ``w`` added at ``t``. Adding is then one multiplication per interaction whatever
    its time (a late one included), ranking a row needs no decay at all (every entry shares
    the factor to ``now``), and a normalised vote divides by the row's sum, where the
    factor cancels. :meth:`score` reads a pair's value decayed to a time. (Unlike the earlier
    form, which did not raise a score stored at a later time than ``now``, every entry is read
    at its true value at ``now``: a worker whose partitions' clocks differ may rank such
    entries differently from before.)

    To recommend, every item in the user's history votes for its neighbours with its kind's
    weight, halved every ``history_half_life_ms`` of age; with ``normalise`` a vote is
    spread over the item's neighbours in proportion to their scores (so a much-touched item
    does not outvote the rest of the history); the history items themselves get
    ``self_weight`` times their vote (things looked at and not bought). The list is filled
    from :class:`Popularity`, which is the whole answer for a user with fewer than
    ``min_history`` distinct items in their history.
    """

    def __init__(
        self,
        pair_window_ms: int = 30 * DAY_MS,
        half_life_ms: int = 60 * DAY_MS,
        max_neighbours: int = 50,
        history_half_life_ms: int = 60 * DAY_MS,
        self_weight: float = 1.0,
        normalise: bool = True,
        min_history: int = 3,
        weights: Mapping[str, float] = EQUAL,
        popularity: Popularity | None = None,
        name: str = "cooccurrence",
    ) -> None:
        self.name = name
        self.normalise, self.min_history = normalise, min_history
        self.pair_window_ms, self.half_life_ms = pair_window_ms, half_life_ms
        self.max_neighbours, self.history_half_life_ms = max_neighbours, history_half_life_ms
        self.self_weight, self.weights = self_weight, weights
        self.popularity = popularity if popularity is not None else Popularity()
        #: item -> {neighbour: score at ``origin_ms``}
        self.neighbours: dict[str, dict[str, float]] = {}
        self.origin_ms: int | None = None

    def score(self, item: str, other: str, now_ms: int) -> float:
        """The pair's score decayed to ``now_ms`` (0 for a pair not kept)."""
        value = self.neighbours.get(item, {}).get(other, 0.0)
        return value * self._to(now_ms) if value else 0.0

    def _to(self, now_ms: int) -> float:
        """The factor from a stored score to its value at ``now_ms`` (reads change nothing)."""
        return 1.0 if self.origin_ms is None else 2.0 ** ((self.origin_ms - now_ms) / self.half_life_ms)

    def _growth(self, t: int) -> float:
        """``2 ** ((t - origin) / half_life)``: a weight added at ``t`` stored at the origin."""
        if self.origin_ms is None:
            self.origin_ms = t
        exponent = (t - self.origin_ms) / self.half_life_ms
        if exponent > _REBASE_AT:
            self._rebase(t)
            return 1.0
        return 2.0**exponent

    def _rebase(self, origin_ms: int) -> None:
        assert self.origin_ms is not None
        shrink = 2.0 ** ((self.origin_ms - origin_ms) / self.half_life_ms)
        for item, row in self.neighbours.items():
            self.neighbours[item] = {other: value * shrink for other, value in row.items()}
        self.origin_ms = origin_ms

    def learn(self, interaction: Interaction, history: Sequence[Interaction]) -> None:
        self.popularity.learn(interaction, history)
        weight = self.weights.get(interaction.kind, 0.0)
        if not weight:
            return
        partners = self.partners(interaction, history)
        if not partners:
            return
        # Both directions of each pair, in line (the hot loop of learning); a new neighbour may
        # overfill the row, which then keeps its strongest.
        item = interaction.item_id
        weight *= self._growth(interaction.ts_ms)
        neighbours, keep = self.neighbours, self.max_neighbours
        most = 2 * keep
        mine = neighbours.get(item)
        if mine is None:
            mine = neighbours[item] = {}
        for other, w in partners.items():
            add = weight * w
            mine[other] = mine.get(other, 0.0) + add
            if len(mine) > most:
                mine = neighbours[item] = strongest(mine, keep)
            row = neighbours.get(other)
            if row is None:
                row = neighbours[other] = {}
            row[item] = row.get(item, 0.0) + add
            if len(row) > most:
                neighbours[other] = strongest(row, keep)

    def partners(self, interaction: Interaction, history: Sequence[Interaction]) -> dict[str, float]:
        """The other items of ``history`` within the pair window before ``interaction``, each
        once at its heaviest kind's weight."""
        t, item = interaction.ts_ms, interaction.item_id
        first = t - self.pair_window_ms  # (integer times: the same test as 0 <= t - ts <= window)
        partners: dict[str, float] = {}
        kind_weight, heaviest = self.weights.get, partners.get
        for _, other, kind, ts in history:  # (unpacked: a NamedTuple's attributes are slower)
            if first <= ts <= t and other != item:
                w = kind_weight(kind, 0.0)
                if w > heaviest(other, 0.0):
                    partners[other] = w
        return partners

    def recommend(
        self, user_id: str, history: Sequence[Interaction], k: int, exclude: Collection[str], now_ms: int
    ) -> list[str]:
        votes: dict[str, float] = {}
        kind_weight, half_life, vote_of = self.weights.get, self.history_half_life_ms, votes.get
        for _, item, kind, ts in history:  # each item once, at its heaviest vote (_decayed, in line)
            w = kind_weight(kind, 0.0)
            if ts < now_ms:
                w *= 0.5 ** ((now_ms - ts) / half_life)
            held = vote_of(item)
            if held is None or w > held:
                votes[item] = w
        scores: dict[str, float] = {}
        # Without normalising, a row's scores are read at now: the one factor from the origin.
        to_now = 1.0 if self.normalise else self._to(now_ms)
        get, rows, self_weight, normalise = scores.get, self.neighbours.get, self.self_weight, self.normalise
        # (A missing score starts at 0.0, not 0: the same sum, since 0 + x is 0.0 + x, and
        # the additions stay float ones, which the interpreter runs faster.)
        for source, vote in votes.items() if len(votes) >= self.min_history else ():
            if self_weight:
                scores[source] = get(source, 0.0) + self_weight * vote
            row = rows(source)
            if not row:
                continue
            if normalise:
                total = sum(row.values())
                if total <= 0.0:
                    continue
                vote /= total
            else:
                vote *= to_now
            for other, value in row.items():
                scores[other] = get(other, 0.0) + vote * value
        out = best(scores, k, exclude, 0.0)
        if len(out) < k:
            out += self.popularity.recommend(user_id, history, k - len(out), {*exclude, *out}, now_ms)
        return out


class RecentlySeen:
    """Not collaborative: the items in the user's history not bought yet, then popularity.

    The ablation that says how much of :class:`CoOccurrence`'s answer comes from its
    ``self_weight`` alone. Ranked by kind weight, halved every ``half_life_ms`` of age.
    """

    def __init__(
        self, half_life_ms: int = 60 * DAY_MS, weights: Mapping[str, float] = EQUAL, popularity: Popularity | None = None
    ) -> None:
        self.name = "recently-seen"
        self.half_life_ms, self.weights = half_life_ms, weights
        self.popularity = popularity if popularity is not None else Popularity()

    def learn(self, interaction: Interaction, history: Sequence[Interaction]) -> None:
        self.popularity.learn(interaction, history)

    def recommend(
        self, user_id: str, history: Sequence[Interaction], k: int, exclude: Collection[str], now_ms: int
    ) -> list[str]:
        scores: dict[str, float] = {}
        for past in history:
            if past.item_id not in exclude:
                w = _decayed(self.weights.get(past.kind, 0.0), past.ts_ms, now_ms, self.half_life_ms)
                scores[past.item_id] = max(w, scores.get(past.item_id, 0.0))
        out = [item for _, item in heapq.nsmallest(k, ((-s, i) for i, s in scores.items() if s > 0))]
        return out + self.popularity.recommend(user_id, history, k - len(out), {*exclude, *out}, now_ms)


class FactorModel:
    """River's ``reco.BiasedMF`` on implicit feedback, ranking the popular items for a user.

    Each interaction is learnt as ``y = 1`` and ``negatives`` items drawn from the window's
    popular items (not the one interacted with) as ``y = 0``. To recommend, the
    ``candidates`` most popular items of the window are ranked by the predicted preference.
    Memory grows with users × ``n_factors`` floats: the model keeps the factors of at most
    ``max_users`` users and drops the least recently active one beyond that (a returning
    dropped user starts again from random factors). A user without factors gets popularity.
    """

    def __init__(
        self,
        n_factors: int = 16,
        negatives: int = 2,
        learning_rate: float = 0.05,
        l2: float = 0.01,
        candidates: int = 150,
        max_users: int = 100_000,
        weights: Mapping[str, float] = WEIGHTS,
        popularity: Popularity | None = None,
        seed: int = 0,
    ) -> None:
        self.name = "biased-mf"
        self.mf = reco.BiasedMF(
            n_factors=n_factors,
            bias_optimizer=optim.SGD(learning_rate),
            latent_optimizer=optim.SGD(learning_rate),
            l2_bias=l2,
            l2_latent=l2,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed,
        )
        self.negatives, self.candidates, self.max_users = negatives, candidates, max_users
        self.weights = weights
        self.popularity = popularity if popularity is not None else Popularity()
        self.rng = random.Random(seed)
        self.users: OrderedDict[str, None] = OrderedDict()

    def learn(self, interaction: Interaction, history: Sequence[Interaction]) -> None:
        self.popularity.learn(interaction, history)
        if not self.weights.get(interaction.kind, 0.0):
            return
        user, item = interaction.user_id, interaction.item_id
        self._touch(user)
        self.mf.learn_one(user, item, 1.0)
        pool = self.popularity.top(self.candidates)
        for _ in range(self.negatives if len(pool) > 1 else 0):
            other = self.rng.choice(pool)
            if other != item:
                self.mf.learn_one(user, other, 0.0)

    def recommend(
        self, user_id: str, history: Sequence[Interaction], k: int, exclude: Collection[str], now_ms: int
    ) -> list[str]:
        if user_id not in self.users:
            return self.popularity.recommend(user_id, history, k, exclude, now_ms)
        pool = self.popularity.recommend(user_id, history, self.candidates, exclude, now_ms)
        predict = self.mf.predict_one
        return heapq.nsmallest(k, pool, key=lambda i: (-predict(user_id, i), i))

    def _touch(self, user: str) -> None:
        self.users[user] = None
        self.users.move_to_end(user)
        while len(self.users) > self.max_users:
            gone, _ = self.users.popitem(last=False)
            for table in (self.mf.u_latents, self.mf.u_biases):
                table.pop(gone, None)


def default_recommender() -> CoOccurrence:
    """The model chosen by measurement (docs/recommendations.md)."""
    return CoOccurrence()
