"""What the recommender needs from a user's state, and its answer as a rule's :class:`Picks`.

The user's recent item interactions and bought items live in :class:`UserState`
(``items``, ``bought``: bounded); the model (:func:`models.reco.default_recommender`, item
co-occurrence with a popularity fallback) keeps nothing per user. The worker feeds the
model each interaction of an event with the user's history *before* it, as the
prequential measurement in ``docs/recommendations.md`` does.

>>> from streams.domain.state import touch_item
>>> reco, other = ItemRecommender(), UserState("v")
>>> for item in ("a", "b"):
...     reco.learn(Interaction("v", item, "purchase", 0), history(other)); touch_item(other, item, 3, 0)
>>> reco(UserState("u", bought=["a"]), 0, 5)
Picks(items=['b'], version='cooccurrence+2')
"""

from __future__ import annotations

from models.reco import CoOccurrence, Interaction, default_recommender
from streams.domain.rules import Picks
from streams.domain.state import ITEM_KINDS, UserState


def history(state: UserState) -> list[Interaction]:
    """The user's recent item interactions, oldest first (built for every click on an item:
    the tuples made directly, without the NamedTuple's Python-level ``__new__``)."""
    user, make = state.user_id, tuple.__new__
    return [make(Interaction, (user, t.item, ITEM_KINDS[t.kind], t.ts)) for t in state.items]


class ItemRecommender:
    """The model and how many interactions it learned (its version: it lives in memory)."""

    def __init__(self, model: CoOccurrence | None = None) -> None:
        self.model = model if model is not None else default_recommender()
        self.learned = 0

    def learn(self, interaction: Interaction, before: list[Interaction]) -> None:
        """Learn one interaction with the user's history before it."""
        self.model.learn(interaction, before)
        self.learned += 1

    def __call__(self, state: UserState, now_ms: int, k: int) -> Picks:
        """Up to ``k`` items for this customer, none already bought (a rule's ``Recommend``)."""
        items = self.model.recommend(state.user_id, history(state), k, set(state.bought), now_ms)
        return Picks(items, f"{self.model.name}+{self.learned}")
