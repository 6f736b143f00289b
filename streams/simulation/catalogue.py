"""The shop's product catalogue: items in categories, with prices and popularity.

The catalogue is fixed (built from its own seed, not the simulation seed) so that
item ids mean the same product across simulation runs with different seeds.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass, field

#: Product categories; every item belongs to exactly one.
CATEGORIES: tuple[str, ...] = (
    "electronics",
    "books",
    "fashion",
    "home",
    "beauty",
    "sports",
    "toys",
    "grocery",
    "garden",
    "automotive",
    "music",
    "pets",
)

# Typical (median) price per category in EUR, and how many items it has relative to others.
_MEDIAN_PRICE: dict[str, float] = {
    "electronics": 79.0,
    "books": 14.0,
    "fashion": 39.0,
    "home": 32.0,
    "beauty": 18.0,
    "sports": 45.0,
    "toys": 24.0,
    "grocery": 6.0,
    "garden": 28.0,
    "automotive": 34.0,
    "music": 16.0,
    "pets": 19.0,
}
_SIZE_WEIGHT: dict[str, float] = {
    "electronics": 1.4,
    "books": 1.6,
    "fashion": 1.5,
    "home": 1.2,
    "beauty": 1.0,
    "sports": 0.9,
    "toys": 0.8,
    "grocery": 1.1,
    "garden": 0.6,
    "automotive": 0.5,
    "music": 0.7,
    "pets": 0.7,
}

#: What people type into the search box when they look for something in a category.
SEARCH_TERMS: dict[str, tuple[str, ...]] = {
    "electronics": ("wireless headphones", "usb c charger", "bluetooth speaker", "phone case", "smart watch"),
    "books": ("crime novel", "cookbook", "fantasy series", "biography", "children's book"),
    "fashion": ("rain jacket", "running shoes", "wool sweater", "jeans slim fit", "summer dress"),
    "home": ("coffee mugs", "bed sheets", "led lamp", "storage boxes", "kitchen knife"),
    "beauty": ("face cream", "shampoo", "sunscreen spf 50", "lip balm", "perfume"),
    "sports": ("yoga mat", "dumbbells", "cycling gloves", "tennis balls", "water bottle"),
    "toys": ("lego", "board game", "puzzle 1000", "plush bear", "rc car"),
    "grocery": ("espresso beans", "green tea", "olive oil", "dark chocolate", "pasta"),
    "garden": ("garden hose", "seeds", "pruning shears", "plant pot", "lawn fertilizer"),
    "automotive": ("car phone holder", "wiper blades", "tyre inflator", "car wax", "dash cam"),
    "music": ("vinyl record", "guitar strings", "headphone amp", "ukulele", "jazz cd"),
    "pets": ("cat food", "dog leash", "cat litter", "dog toy", "fish flakes"),
}


@dataclass(frozen=True, slots=True)
class Item:
    """One product: id, category and list price in EUR (two decimals)."""

    item_id: str
    category: str
    price: float


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Items grouped by category, with cumulative popularity weights for fast sampling."""

    items: tuple[Item, ...]
    by_category: dict[str, tuple[Item, ...]] = field(repr=False)
    cum_popularity: dict[str, tuple[float, ...]] = field(repr=False)

    def pick(self, category: str, rng: random.Random) -> Item:
        """A popular-biased item of ``category`` (Zipf-like popularity, so views and purchases cluster)."""
        cum = self.cum_popularity[category]
        return self.by_category[category][bisect_right(cum, rng.random() * cum[-1])]


def build_catalogue(n_items: int = 500, seed: int = 0) -> Catalogue:
    """A deterministic catalogue of ``n_items`` items over :data:`CATEGORIES`."""
    if n_items < len(CATEGORIES):
        raise ValueError(f"need at least {len(CATEGORIES)} items, one per category")
    rng = random.Random(f"retention-catalogue-{seed}")
    total_weight = sum(_SIZE_WEIGHT.values())
    sizes = {c: max(1, int(n_items * _SIZE_WEIGHT[c] / total_weight)) for c in CATEGORIES}
    # Hand out the rounding remainder to the biggest categories, deterministically.
    for c in sorted(CATEGORIES, key=lambda c: -_SIZE_WEIGHT[c])[: n_items - sum(sizes.values())]:
        sizes[c] += 1
    items: list[Item] = []
    by_category: dict[str, tuple[Item, ...]] = {}
    cum_popularity: dict[str, tuple[float, ...]] = {}
    for category in CATEGORIES:
        group: list[Item] = []
        for _ in range(sizes[category]):
            raw = rng.lognormvariate(0.0, 0.55) * _MEDIAN_PRICE[category]
            price = max(0.99, round(raw) - 0.01) if raw >= 2 else round(max(raw, 0.49), 2)
            group.append(Item(f"i{len(items) + len(group):05d}", category, round(price, 2)))
        items.extend(group)
        weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(group))]
        rng.shuffle(weights)  # popularity is not tied to the item number
        running, cum = 0.0, []
        for w in weights:
            running += w
            cum.append(running)
        by_category[category] = tuple(group)
        cum_popularity[category] = tuple(cum)
    return Catalogue(tuple(items), by_category, cum_popularity)
