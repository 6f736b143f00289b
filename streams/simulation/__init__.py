"""A synthetic shop with known ground truth: realistic clicks, purchases and reviews in event time."""

from .catalogue import CATEGORIES, SEARCH_TERMS, Catalogue, Item, build_catalogue
from .offers import OfferEffects, Offered, OfferTruth, truth_report
from .shop import TOPICS, CustomerTruth, LatentState, Shop, SimRecord, SimulationConfig
from .texts import CATEGORY_NOUNS, LANGUAGE_SHARES, PHRASES, polarity_for_rating, review_text
from .wire import MALFORMATIONS, encode, malformed

__all__ = [
    "CATEGORIES",
    "CATEGORY_NOUNS",
    "LANGUAGE_SHARES",
    "MALFORMATIONS",
    "OfferEffects",
    "OfferTruth",
    "Offered",
    "PHRASES",
    "SEARCH_TERMS",
    "TOPICS",
    "Catalogue",
    "CustomerTruth",
    "Item",
    "LatentState",
    "Shop",
    "SimRecord",
    "SimulationConfig",
    "build_catalogue",
    "encode",
    "malformed",
    "polarity_for_rating",
    "review_text",
    "truth_report",
]
