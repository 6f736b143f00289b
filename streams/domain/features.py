"""A user's features at a given event time, and the model's vector built from them.

:func:`features` is the one place that turns state into numbers: the churn model's
training snapshots, its scores, the action reasons, ``GET /users/{id}`` and the
``user-scores`` topic all call it, so what a model learns from is exactly what it is
later asked about (no training/serving skew). Every feature is listed, with its
definition, window and unit, in :data:`FEATURES` (and so in the README's table).

Recency and every window are measured at ``now`` (the event-time clock), not at the
user's last event, so a silent customer keeps aging.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from models.score import NEGATIVE_THRESHOLD
from streams.domain.population import Population, rfm_of
from streams.domain.sketches import kmv_count
from streams.domain.state import StateConfig, UserState, abandoned_carts_open, purchase_day_count, purchase_gaps
from streams.domain.timestamps import MS_PER_DAY
from streams.domain.windows import CLICK_KINDS, COLUMNS, LEVELS, WINDOWS, window_span


class Feature(NamedTuple):
    name: str
    definition: str
    window: str
    unit: str


CLICK_WINDOWS = ("1h", "24h", "7d", "30d", "90d")
_COLUMN = {name: i for i, name in enumerate(COLUMNS)}
#: Tile columns read by :func:`features` by position: the click kinds then sessions lead COLUMNS.
_CLICK_COLUMNS = len(CLICK_KINDS) + 1
_PURCHASES, _SPEND, _CARTS = _COLUMN["purchases"], _COLUMN["spend_cents"], _COLUMN["carts_abandoned"]
assert COLUMNS[:_CLICK_COLUMNS] == (*CLICK_KINDS, "sessions")
PURCHASE_WINDOWS = ("7d", "30d", "90d", "365d")


def _catalogue() -> tuple[Feature, ...]:
    out = []
    for window in CLICK_WINDOWS:
        for kind in CLICK_KINDS:
            out.append(Feature(f"{kind}_{window}", f"`{kind}` clicks", window, "count"))
        out.append(Feature(
            f"sessions_{window}",
            "sessions started, in the tile of their first click (a session is a session_id, else the channel's clicks in one "
            "RETENTION_SESSION_GAP_MINUTES bucket; a session_id seen again while among the user's 16 latest counts once)",
            window, "count"))
    for window in PURCHASE_WINDOWS:
        out.append(Feature(f"purchases_{window}", "purchases", window, "count"))
        out.append(Feature(f"spend_{window}", "sum of purchase totals", window, "currency units"))
    out += [
        Feature("days_active_30d", "days with at least one click", "30d", "days"),
        Feature("distinct_items_viewed", "distinct item_id in clicks (exact below 16, then KMV estimate)", "lifetime", "count"),
        Feature("distinct_categories_viewed", "distinct category in clicks (exact below 16, then KMV estimate)", "lifetime", "count"),
        Feature("purchases", "purchases", "lifetime", "count"),
        Feature("purchase_days", "distinct UTC days with a purchase (orders of one day count once, as in the loyalty label)", "lifetime", "days"),
        Feature("spend", "sum of purchase totals", "lifetime", "currency units"),
        Feature("avg_order_value", "spend / purchases (0 without purchases)", "lifetime", "currency units"),
        Feature("first_seen_days", "days since the user's first event", "lifetime", "days"),
        Feature("last_seen_days", "days since the user's latest event", "lifetime", "days"),
        Feature("recency_days", "days since the last purchase (since first seen without one)", "lifetime", "days"),
        Feature("gap_mean_days", "mean gap between purchases: (last - first purchase) / (purchases - 1)", "lifetime", "days"),
        Feature("gap_std_days", "sample standard deviation of the gaps between the latest 16 purchases", "latest 16 purchases", "days"),
        Feature("recency_over_gap", "recency_days / gap_mean_days (0 without a gap)", "lifetime", "ratio"),
        Feature("carts_abandoned_7d", "add_to_cart/checkout_start episodes with no purchase within the cart timeout", "7d", "count"),
        Feature("carts_abandoned_30d", "as above", "30d", "count"),
        Feature("carts_abandoned", "as above", "lifetime", "count"),
        Feature("searches_since_purchase", "searches after the last purchase (at most 32 remembered)", "since last purchase", "count"),
        Feature("reviews", "reviews", "lifetime", "count"),
        Feature("rating_mean", "mean star rating (0 without reviews)", "lifetime", "stars"),
        Feature("last_rating", "rating of the latest review (0 without reviews)", "latest", "stars"),
        Feature("sentiment_mean", "mean sentiment of review texts, -1 (negative) to 1 (models/sentiment.py)", "lifetime", "score"),
        Feature("last_sentiment", "sentiment of the latest review's text (0 without text)", "latest", "score"),
        Feature("rfm_recency", "1-5: quintile of the last purchase's day among the worker's buyers (5 = most recent; 0 = never bought)", "current population", "score"),
        Feature("rfm_frequency", "1-5: quintile of lifetime purchases among the buyers", "current population", "score"),
        Feature("rfm_monetary", "1-5: quintile of lifetime spend among the buyers", "current population", "score"),
        Feature("negative_reviews", f"reviews whose text scores at most {NEGATIVE_THRESHOLD} (a negative review)", "lifetime", "count"),
        Feature("last_gap_days", "days between the latest two purchase days (0 with fewer than two)", "latest 16 purchases", "days"),
        Feature("last_gap_ratio", "last_gap_days / gap_mean_days: the latest gap against the customer's usual one (0 without a gap)", "lifetime", "ratio"),
        Feature("first_order_value", "total of the customer's first purchase (0 in states kept before it was recorded)", "lifetime", "currency units"),
        Feature("spend_trend", "total of the latest purchase / avg_order_value (0 without purchases)", "lifetime", "ratio"),
        Feature("order_value_std", "standard deviation of the purchase totals", "lifetime", "currency units"),
        Feature("usual_gap_days", "mean gap between consecutive purchase days (0 with fewer than two)", "latest 16 purchases", "days"),
        Feature("gap_drift", "last_gap_days / the mean of the gaps before it: above 1 the customer is slowing down, "
                "below 1 speeding up (0 with fewer than three purchase days)", "latest 16 purchases", "ratio"),
        Feature("overdue_ratio", "days since the latest purchase day / usual_gap_days: how many of the customer's usual "
                "gaps the current silence spans (0 without a gap)", "latest 16 purchases", "ratio"),
    ]
    return tuple(out)


FEATURES: tuple[Feature, ...] = _catalogue()
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

#: What the churn model sees (a subset: raw per-kind counts add noise, not signal).
MODEL_FEATURES: tuple[str, ...] = (
    "recency_days",
    "first_seen_days",
    "purchases",
    "log_spend",
    "avg_order_value",
    "gap_mean_days",
    "gap_std_days",
    "recency_over_gap",
    "purchases_30d",
    "purchases_90d",
    "clicks_7d",
    "clicks_30d",
    "days_active_30d",
    "carts_abandoned_30d",
    "searches_since_purchase",
    "reviews",
    "rating_mean",
    "sentiment_mean",
    # appended (issue 4): vectors stored before it are one shorter and still line up
    "purchase_days",
    # appended (issue 19): the latest gap against the usual one, which BG/NBD's (x, t_x, T)
    # cannot carry (chosen among five by scripts/measure-features, docs/evaluation.md);
    # vectors stored before it are one shorter and still line up
    "last_gap_ratio",
)


#: Candidate features of a customer's recent browsing (issue 21), measured for the coupon's
#: uplift targeting by ``scripts/measure-targeting-features`` (docs/uplift.md, "Features for
#: targeting"): **not published and not model inputs** (they did not carry the gain).
#: Read from the day tiles the state keeps anyway: nothing is added per event.
BEHAVIOUR: tuple[Feature, ...] = (
    Feature("browse_depth_ew", "browsing clicks (page, product, search, wishlist) per session, each day weighted "
            "by exp(-age / 7 d): how deeply the customer browses lately (0 without a session)", "30d", "clicks"),
    Feature("browse_depth_14d", "browsing clicks per session (0 without a session)", "14d", "clicks"),
    Feature("cart_rate_14d", "add_to_cart clicks per session (0 without a session)", "14d", "ratio"),
    Feature("abandon_rate_14d", "carts abandoned (closed episodes) per session (0 without a session)", "14d", "ratio"),
    Feature("visit_trend", "sessions per day, each day weighted by exp(-age / 7 d), over the sessions per day of the "
            "latest 13 weeks: below 1 the customer visits less than usual (0 without a session in 13 weeks)", "30d / 90d", "ratio"),
)
_DAY_LEVEL = next(i for i, level in enumerate(LEVELS) if level.tile_ms == MS_PER_DAY)
#: Each of the latest 30 days' weight, by age in days: exp(-age / 7 d).
_DAY_WEIGHTS = tuple(math.exp(-age / 7.0) for age in range(30))
_BROWSE_COLUMNS = tuple(_COLUMN[k] for k in ("page_view", "product_view", "search", "wishlist"))
_SESSIONS, _ADDS = _COLUMN["sessions"], _COLUMN["add_to_cart"]


def behaviour_features(state: UserState, now: int) -> dict[str, float]:
    """The :data:`BEHAVIOUR` candidates at event time ``now``, from the day tiles (the
    latest 30 days) and the 90-day window: what a drifting customer does differently from
    a loyal one in the simulator (``streams/simulation/shop.py``: fewer browsing steps per
    visit, more abandoned carts, visits decaying) and a real shop would read the same way.

    >>> from streams.domain.windows import Tiles
    >>> t, day = Tiles(), MS_PER_DAY
    >>> t.add(0, {"sessions": 1, "page_view": 1, "product_view": 3}, now=0)
    >>> t.add(10 * day, {"sessions": 3, "page_view": 4, "add_to_cart": 1, "carts_abandoned": 1}, now=10 * day)
    >>> b = behaviour_features(UserState("u", tiles=t), 10 * day)
    >>> b["browse_depth_14d"], b["cart_rate_14d"], b["abandon_rate_14d"]
    (2.0, 0.25, 0.25)
    >>> round(b["browse_depth_ew"], 3)  # today's shallow sessions weigh more than the deep one 10 days ago
    1.531
    """
    current = now // MS_PER_DAY
    sessions = browse = adds = abandoned = 0
    ew_sessions = ew_browse = 0.0
    for index, row in state.tiles.levels[_DAY_LEVEL].items():
        age = current - index
        if not 0 <= age < 30:
            continue
        clicks = sum(row[c] for c in _BROWSE_COLUMNS)
        weight = _DAY_WEIGHTS[age]
        ew_sessions += weight * row[_SESSIONS]
        ew_browse += weight * clicks
        if age < 14:
            sessions += row[_SESSIONS]
            browse += clicks
            adds += row[_ADDS]
            abandoned += row[_CARTS]
    usual = state.tiles.sums("90d", now)[_SESSIONS] / 91
    return {
        "browse_depth_ew": ew_browse / ew_sessions if ew_sessions else 0.0,
        "browse_depth_14d": browse / sessions if sessions else 0.0,
        "cart_rate_14d": adds / sessions if sessions else 0.0,
        "abandon_rate_14d": abandoned / sessions if sessions else 0.0,
        "visit_trend": ew_sessions / sum(_DAY_WEIGHTS) / usual if usual else 0.0,
    }


class Gaps(NamedTuple):
    """The gaps between a customer's purchase days, in days (:func:`purchase_day_gaps`)."""

    last: float  #: the latest gap (0 with fewer than two purchase days)
    usual: float  #: the mean gap (0 with fewer than two purchase days)
    drift: float  #: the latest gap over the mean of those before it (0 with fewer than three purchase days)


def purchase_day_gaps(times: list[int]) -> Gaps:
    """The gaps between the distinct UTC days of the purchases at ``times`` (the latest ones
    a state keeps: bounded, any order): the latest, the mean, and the latest against the mean
    of the earlier ones. What BG/NBD's (x, t_x, T) cannot carry: whether the latest gap is
    longer than the customer's rhythm before it (drifting away) or not.

    >>> purchase_day_gaps([0, 5, 10 * MS_PER_DAY, 20 * MS_PER_DAY, 60 * MS_PER_DAY])
    Gaps(last=40.0, usual=20.0, drift=4.0)
    >>> purchase_day_gaps([3 * MS_PER_DAY, 0])
    Gaps(last=3.0, usual=3.0, drift=0.0)
    """
    days = sorted({t // MS_PER_DAY for t in times})
    n = len(days) - 1
    if n < 1:
        return Gaps(0.0, 0.0, 0.0)
    last = float(days[-1] - days[-2])
    usual = (days[-1] - days[0]) / n
    drift = last / ((days[-2] - days[0]) / (n - 1)) if n >= 2 else 0.0
    return Gaps(last, usual, drift)


def overdue_ratio(times: list[int], now: int, usual_gap_days: float) -> float:
    """Days from the latest purchase day to ``now`` over the usual gap: above 1 the customer
    is overdue by their own rhythm (0 without a gap).

    >>> overdue_ratio([0, 10 * MS_PER_DAY + 5], 40 * MS_PER_DAY, 10.0)
    3.0
    """
    if usual_gap_days <= 0 or not times:
        return 0.0
    return max(0.0, now - max(times) // MS_PER_DAY * MS_PER_DAY) / MS_PER_DAY / usual_gap_days


def _days(now: int, then: int) -> float:
    return max(0.0, (now - then) / MS_PER_DAY)


def features(
    state: UserState, now: int, cfg: StateConfig = StateConfig(), population: Population | None = None
) -> dict[str, float]:
    """Every feature of :data:`FEATURES` at event time ``now``; the RFM scores are 0
    without a ``population`` to rank against.

    Built as a list of values in :data:`FEATURE_NAMES` order (no per-call key strings or
    intermediate dict: it runs for every score row, sweep and rule evaluation)."""
    tiles = state.tiles
    sums = tiles.all_sums(now)  # one pass over each window's tiles
    values: list[float] = []
    for window in CLICK_WINDOWS:
        values += sums[window][:_CLICK_COLUMNS]  # the click kinds, then sessions (COLUMNS order)
    for window in PURCHASE_WINDOWS:
        s = sums[window]
        values += (s[_PURCHASES], s[_SPEND] / 100)
    purchases, spend = state.purchases, state.spend_cents / 100
    avg_order_value = spend / purchases if purchases else 0.0
    recency = _days(now, state.last_purchase if state.last_purchase is not None else state.first_seen)
    gap_mean, gap_std = purchase_gaps(state)
    open_abandoned = abandoned_carts_open(state, now, cfg)
    carts = []
    for window in ("7d", "30d"):
        level, n = WINDOWS[window]
        tile_ms = LEVELS[level].tile_ms
        current = now // tile_ms
        recent = sum(1 for ts in open_abandoned if current - n < ts // tile_ms <= current) if open_abandoned else 0
        carts.append(sums[window][_CARTS] + recent)
    since = state.last_purchase if state.last_purchase is not None else -1
    gaps = purchase_day_gaps(state.purchase_times)
    gap_days = gaps.last
    r, f, m = population.scores(rfm_of(state)) if population is not None else (0, 0, 0)
    values += (
        tiles.active_tiles("30d", CLICK_KINDS, now),  # days_active_30d
        kmv_count(state.items_seen),
        kmv_count(state.categories_seen),
        purchases,
        purchase_day_count(state),
        spend,
        avg_order_value,
        _days(now, state.first_seen),
        _days(now, state.last_seen),
        recency,
        gap_mean,
        gap_std,
        recency / gap_mean if gap_mean > 0 else 0.0,  # recency_over_gap
        carts[0],
        carts[1],
        state.carts_abandoned + len(open_abandoned),
        sum(1 for ts in state.search_times if ts > since),  # searches_since_purchase
        state.reviews,
        state.rating_sum / state.reviews if state.reviews else 0.0,
        state.last_rating,
        state.sentiment_milli_sum / 1000 / state.texts if state.texts else 0.0,
        state.last_sentiment_milli / 1000,
        r, f, m,
        state.negative_reviews,
        gap_days,
        gap_days / gap_mean if gap_mean > 0 else 0.0,  # last_gap_ratio
        state.first_order_cents / 100,
        state.last_order_cents / 100 / avg_order_value if avg_order_value > 0 else 0.0,  # spend_trend
        math.sqrt(max(0.0, state.order_cents_sq / 1e4 / purchases - avg_order_value**2)) if purchases else 0.0,
        gaps.usual,
        gaps.drift,
        overdue_ratio(state.purchase_times, now, gaps.usual),
    )
    return dict(zip(FEATURE_NAMES, map(float, values)))


#: The per-kind click features summed into ``clicks_7d`` and ``clicks_30d``.
_CLICK_SUMS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (f"clicks_{window}", tuple(f"{kind}_{window}" for kind in CLICK_KINDS)) for window in ("7d", "30d"))


def model_inputs(all_features: dict[str, float]) -> dict[str, float]:
    """The churn model's inputs, derived from :func:`features` only."""
    derived = {"log_spend": math.log1p(all_features["spend"])}
    for name, kinds in _CLICK_SUMS:
        derived[name] = sum(map(all_features.__getitem__, kinds))
    return {name: derived[name] if name in derived else all_features[name] for name in MODEL_FEATURES}


def feature_vector(state: UserState, now: int, cfg: StateConfig = StateConfig()) -> list[float]:
    """The model's inputs at event time ``now``, in :data:`MODEL_FEATURES` order
    (stored with scoring points until their labels mature)."""
    x = model_inputs(features(state, now, cfg))
    return [x[name] for name in MODEL_FEATURES]


def as_dict(vector: list[float]) -> dict[str, float]:
    """Name the values of a model vector, as River learners and action reasons want them."""
    return dict(zip(MODEL_FEATURES, vector))


def features_markdown() -> str:
    """The feature table of the README (the per-kind click counts folded into one row)."""
    kinds = ", ".join(f"`{k}`" for k in CLICK_KINDS)
    spans = "; ".join(f"{w} = {window_span(w)}" for w in WINDOWS)
    rows = [
        "| Feature | Definition | Window | Unit |",
        "| --- | --- | --- | --- |",
        f"| `<kind>_<window>` | clicks of each kind ({kinds}) | {', '.join(CLICK_WINDOWS)} | count |",
        f"| `sessions_<window>` | {next(f.definition for f in FEATURES if f.name.startswith('sessions_'))} "
        f"| {', '.join(CLICK_WINDOWS)} | count |",
    ]
    for f in FEATURES:
        kind, _, window = f.name.rpartition("_")
        if (kind in CLICK_KINDS or kind == "sessions") and window in CLICK_WINDOWS:
            continue
        rows.append(f"| `{f.name}` | {f.definition} | {f.window} | {f.unit} |")
    return "\n".join(rows) + (
        f"\n\nWindows are tiles of event time aligned to the Unix epoch (UTC days; weeks start on "
        f"Thursdays): {spans}.\n"
    )
