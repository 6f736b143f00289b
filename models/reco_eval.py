"""Prequential evaluation of the recommenders: hit rate@k on each customer's next purchase.

Events are replayed in event-time order. At each purchase, before anything learns from it,
every model is asked for ``k`` items for that customer, excluding what the customer bought
before; a **hit** is a purchase with at least one of its items in the list. Then the
models learn.

What a model may know at that moment: everything up to the start of the customer's
current session. A customer's clicks are held back until their session ends (a click more
than ``session_gap_ms`` after the previous one, or the purchase itself, after the
question): otherwise the ``add_to_cart`` of the very item bought a minute earlier would be
in the history, and the measurement would be of the cart, not of the recommender. So the
list is the one the customer would have been shown just before the visit in which they
bought (an e-mail, the home page), the use retention actions have.

Segments: **new** is a customer's first purchase in the replay (the history holds at most
earlier browsing), **returning** every later one. ``reachable`` is the share of purchases
with an item the customer had not bought before, the ceiling of any recommender that
excludes bought items.

>>> from streams.domain.events import Purchase, Item
>>> buy = lambda u, t, *items: Purchase("e", u, t, "o", [Item(i, 1, 1.0) for i in items], 1.0, "EUR", "web")
>>> from models.reco import Popularity
>>> tallies = evaluate([buy("a", 0, "x"), buy("b", 1, "x"), buy("b", 2, "y")], {"popularity": Popularity()})
>>> tallies["popularity"].rate("all"), tallies["popularity"].rate("new"), tallies["popularity"].rate("returning")
(0.3333333333333333, 0.5, 0.0)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from models.reco import (
    PURCHASES_ONLY,
    WEIGHTS,
    CoOccurrence,
    FactorModel,
    Interaction,
    Popularity,
    RecentlySeen,
    Recommender,
    default_recommender,
    interactions,
)
from streams.domain.events import Click, Purchase, decode
from streams.simulation import Shop, SimulationConfig

if TYPE_CHECKING:
    from rich.table import Table

MINUTE_MS = 60_000
DAY_MS = 86_400_000
SEGMENTS = ("all", "new", "returning")


@dataclass
class Tally:
    """Purchases asked about and hits, per segment."""

    asked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEGMENTS, 0))
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEGMENTS, 0))

    def add(self, segment: str, hit: bool) -> None:
        for s in ("all", segment):
            self.asked[s] += 1
            self.hits[s] += hit

    def rate(self, segment: str) -> float:
        return self.hits[segment] / self.asked[segment] if self.asked[segment] else float("nan")


@dataclass
class _User:
    history: deque[Interaction]
    pending: list[Interaction] = field(default_factory=list)
    last_click_ms: int | None = None
    bought: set[str] = field(default_factory=set)
    purchases: int = 0


def evaluate(
    events: Iterable[object],
    models: Mapping[str, Recommender],
    k: int = 10,
    history_len: int = 50,
    session_gap_ms: int = 30 * MINUTE_MS,
) -> dict[str, Tally]:
    """Replay ``events`` (in event-time order) and tally hit rate@``k`` per model.

    The result also has a ``"reachable"`` tally: a "hit" there is a purchase with an item
    not bought before.
    """
    tallies = {name: Tally() for name in (*models, "reachable")}
    users: dict[str, _User] = {}

    def flush(user: _User) -> None:
        for interaction in user.pending:
            history = tuple(user.history)
            for model in models.values():
                model.learn(interaction, history)
            user.history.append(interaction)
        user.pending.clear()

    for event in events:
        if not isinstance(event, (Click, Purchase)):
            continue
        user = users.get(event.user_id)
        if user is None:
            user = users[event.user_id] = _User(deque(maxlen=history_len))
        if isinstance(event, Click):
            if user.last_click_ms is not None and event.ts - user.last_click_ms > session_gap_ms:
                flush(user)
            user.last_click_ms = int(event.ts)
            user.pending += interactions(event)
            continue
        if user.last_click_ms is not None and event.ts - user.last_click_ms > session_gap_ms:
            flush(user)  # that session ended before this purchase (in a store, or a session without clicks)
        items = {line.item_id for line in event.items}
        segment = "returning" if user.purchases else "new"
        history = tuple(user.history)
        for name, model in models.items():
            recommended = model.recommend(event.user_id, history, k, user.bought, int(event.ts))
            tallies[name].add(segment, not items.isdisjoint(recommended))
        tallies["reachable"].add(segment, not items <= user.bought)
        user.pending += interactions(event)
        flush(user)
        user.last_click_ms = None  # the purchase ends the session
        user.bought |= items
        user.purchases += 1
    return tallies


def shop_events(config: SimulationConfig) -> Iterator[Click | Purchase]:
    """The simulator's well-formed clicks and purchases, decoded by the contract, in event-time order."""
    encode = msgspec.json.encode
    for record in Shop(config).records():
        if record.valid and record.topic in ("clicks", "purchases"):
            event = decode(record.topic, encode(record.value))
            if isinstance(event, (Click, Purchase)):
                yield event


#: The first version measured: summed kind-weighted votes, no seen items, no minimum history.
RAW = {"normalise": False, "self_weight": 0.0, "min_history": 1, "weights": WEIGHTS, "history_half_life_ms": 14 * DAY_MS}


def candidates(seed: int = 0) -> dict[str, Callable[[], Recommender]]:
    """The models compared, by name; each call builds a fresh one."""
    return {
        "popularity (purchases, 14 d)": lambda: Popularity(weights=PURCHASES_ONLY),
        "popularity (all kinds, 14 d)": lambda: Popularity(weights=WEIGHTS),
        "recently seen, not bought": lambda: RecentlySeen(),
        "co-occurrence 30 min, raw votes": lambda: CoOccurrence(**RAW, pair_window_ms=30 * MINUTE_MS),
        "co-occurrence 7 d, raw votes": lambda: CoOccurrence(**RAW, pair_window_ms=7 * DAY_MS),
        "co-occurrence 30 d, normalised": lambda: CoOccurrence(self_weight=0.0),
        "co-occurrence 30 d, normalised, + seen (default)": lambda: default_recommender(),
        "biased-mf (River)": lambda: FactorModel(seed=seed),
    }


def run(
    customers: int, days: float, seed: int, k: int = 10, only: Iterable[str] | None = None
) -> dict[str, Tally]:
    """Evaluate the :func:`candidates` (or those named in ``only``) on one simulated shop."""
    chosen = {name: make() for name, make in candidates(seed).items() if only is None or name in set(only)}
    config = SimulationConfig(customers=customers, days=days, seed=seed)
    return evaluate(shop_events(config), chosen, k=k)


def report(tallies: Mapping[str, Tally], k: int = 10) -> Table:
    """The tallies as a rich table: hit rate@k per model and segment, purchases asked about."""
    from rich.table import Table

    asked = tallies["reachable"].asked
    table = Table(title=f"Hit rate@{k} on the next purchase (prequential; bought items excluded)")
    table.add_column("model")
    for segment in SEGMENTS:
        table.add_column(f"{segment} (n={asked[segment]})", justify="right")
    table.add_column("all vs best popularity", justify="right")
    baseline = max((t.rate("all") for name, t in tallies.items() if name.startswith("popularity")), default=float("nan"))
    for name, tally in tallies.items():
        if name == "reachable":
            continue
        table.add_row(name, *(f"{tally.rate(s):.3f}" for s in SEGMENTS), f"{tally.rate('all') / baseline:.2f}×")
    reach = tallies["reachable"]
    table.add_row("[dim]ceiling: a not-yet-bought item[/dim]", *(f"[dim]{reach.rate(s):.3f}[/dim]" for s in SEGMENTS), "")
    return table
