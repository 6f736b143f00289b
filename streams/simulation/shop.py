"""A synthetic online shop whose customers have a known, evolving latent state.

Why: the retention system learns churn from clicks, purchases and reviews; to
test and demo it we need realistic event streams *and* the truth behind them.
Everything here is pure: no Kafka, no I/O, no wall clock. Time is simulated
event time, and a given :class:`SimulationConfig` always yields the same records.

Dynamics (per customer, in continuous event time):

* ``new`` (after joining): browses a lot, often buys within days; after 2-6
  weeks becomes ``loyal`` (~70 %) or ``drifting``.
* ``loyal``: buys at a personal, fairly regular gap (5-20 days), browses often,
  rates well. Starts drifting after a personal mean of ~5 months, or earlier
  after a bad experience (a 1-2 star review pushes half of them to ``drifting``).
* ``drifting``: purchase gaps stretch, half the planned purchases turn into
  abandoned carts, browsing decays, ratings are low. After a week or more it
  either ``churned`` (~70 %) or recovers to ``loyal``.
* ``churned``: never buys; rare short visits; a tiny chance to come back (loyal): after
  an exponential time of mean ``SimulationConfig.reactivation_mean_days`` (2,500 days by
  default; the targeting evaluation's backfire world makes them dormant, with 180).

Customers in ``config.customers`` existed before the window: their state was
run forward silently from a join date up to 8 months before ``config.start``.
More customers arrive during the window (Poisson, ``new_customers_per_day``).
"""

from __future__ import annotations

import copy
import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum

from streams.domain.timestamps import format_ts

from .catalogue import CATEGORIES, SEARCH_TERMS, Catalogue, Item, build_catalogue
from .offers import OfferEffects, Offered, OfferTruth, itt_truth_report, p_in_window, truth_report
from .texts import review_text
from .wire import malformed

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
_NEVER = 1 << 62  # "no such event planned"; an int so comparisons stay int-only
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: Logical topics the simulator writes, in the order counts are reported.
TOPICS: tuple[str, ...] = ("clicks", "purchases", "reviews", "heartbeats", "action-outcomes")


class LatentState(str, Enum):
    """The hidden customer state the retention system tries to infer."""

    NEW = "new"
    LOYAL = "loyal"
    DRIFTING = "drifting"
    CHURNED = "churned"


NEW, LOYAL, DRIFTING, CHURNED = LatentState.NEW, LatentState.LOYAL, LatentState.DRIFTING, LatentState.CHURNED


#: The simulated period's default start.
DEFAULT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate; the same config always yields the same records."""

    customers: int = 1000  # customers existing at the start ...
    new_customers_per_day: float = 5.0  # ... plus arrivals
    days: float = 180.0
    seed: int = 7
    start: datetime = DEFAULT_START  # naive datetimes are taken as UTC
    heartbeat_every: timedelta = timedelta(hours=1)
    invalid_share: float = 0.0  # of clicks/purchases/reviews records, replaced by malformed bytes
    duplicate_share: float = 0.0  # of valid clicks/purchases/reviews records, re-sent shortly after
    #: Mean days a churned customer stays away before coming back on its own (``loyal``). The
    #: same number of draws whatever the value: a world with dormant customers (a short mean)
    #: differs from the default only in what the draws mean.
    reactivation_mean_days: float = 2500.0

    def __post_init__(self) -> None:
        if self.customers < 0 or self.new_customers_per_day < 0:
            raise ValueError("customers and new_customers_per_day must be >= 0")
        if not self.days > 0:
            raise ValueError("days must be > 0")
        if not self.reactivation_mean_days > 0:
            raise ValueError("reactivation_mean_days must be > 0")
        if self.heartbeat_every <= timedelta(0):
            raise ValueError("heartbeat_every must be positive")
        for name in ("invalid_share", "duplicate_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")


@dataclass(frozen=True, slots=True)
class SimRecord:
    """One record for a topic: a dict to JSON-encode, or raw bytes when deliberately malformed."""

    topic: str  # logical topic: "clicks" | "purchases" | "reviews" | "heartbeats"
    key: str | None  # user_id (None for heartbeats; also None for some malformed records)
    value: dict | bytes  # a dict for well-formed records (caller encodes JSON); raw bytes for malformed ones
    ts_ms: int  # event time for ordering/pacing; for a duplicate, the (later) time it is re-sent
    valid: bool  # False for the deliberately malformed records


@dataclass
class CustomerTruth:
    """What really happened to one customer (the labels the system is judged against)."""

    user_id: str
    joined_ms: int  # before config.start for customers that existed at the start
    transitions: list[tuple[int, LatentState]]  # (ts_ms, new state), first one is (joined_ms, NEW)
    purchases: int = 0  # well-formed purchase records emitted (malformed ones are not counted)
    spend: float = 0.0  # sum of their totals, EUR
    natural: list[int] = field(default_factory=list)  # times of those not caused by an offer (Y0 of offers)
    #: Natural purchases an offer that backfired suppressed (in ``natural`` too: the world
    #: without the offer has them; not emitted, not in ``purchases``).
    suppressed: list[int] = field(default_factory=list)
    extra: list[tuple[int, str]] = field(default_factory=list)  # (time, action_id) of those an offer caused


# --- tuning -----------------------------------------------------------------------------------

#: Relative activity by UTC hour (European customers: quiet at night, peak in the evening).
_DIURNAL = (0.3, 0.15, 0.1, 0.08, 0.08, 0.15, 0.4, 0.9, 1.3, 1.4, 1.4, 1.5,
            1.7, 1.6, 1.4, 1.4, 1.5, 1.8, 2.2, 2.6, 2.8, 2.4, 1.6, 0.8)  # fmt: skip
_DIURNAL_CUM = tuple(sum(_DIURNAL[: h + 1]) for h in range(24))

_NEW_DWELL_MIN_DAYS, _NEW_DWELL_MEAN_DAYS = 14.0, 14.0
_DRIFT_MIN_DAYS = 7.0
_DRIFT_TO_CHURN_MEAN_DAYS, _DRIFT_TO_LOYAL_MEAN_DAYS = 14.0, 35.0
_DRIFT_DECAY_DAYS = 12.0  # e-folding time of a drifting customer's activity
_DRIFT_SKIP = 0.5  # share of a drifting customer's planned purchases that become abandoned visits
_CHURNED_BROWSE_PER_DAY = 0.012
_BAD_REVIEW_DRIFT = 0.5  # chance a 1-2 star review by a new/loyal customer starts drifting
_BURN_IN_MAX_DAYS = 240.0

#: Cumulative rating probabilities (1..5 stars) by state at purchase time.
_RATING_CUM = {
    NEW: (0.04, 0.08, 0.18, 0.50, 1.0),
    LOYAL: (0.02, 0.05, 0.13, 0.45, 1.0),
    DRIFTING: (0.14, 0.32, 0.60, 0.85, 1.0),
    CHURNED: (0.14, 0.32, 0.60, 0.85, 1.0),
}
#: Chance of writing a review, by rating (unhappy customers write more).
_REVIEW_P = (0.0, 0.5, 0.45, 0.22, 0.2, 0.25)
#: (abandoned cart, abandoned checkout) shares of non-buying visits, by state.
_ABANDON = {NEW: (0.12, 0.04), LOYAL: (0.08, 0.03), DRIFTING: (0.22, 0.07), CHURNED: (0.0, 0.0)}
#: Browsing steps per visit (min, max), by state.
_STEPS = {NEW: (2, 7), LOYAL: (1, 6), DRIFTING: (1, 3), CHURNED: (0, 2)}

_BROWSE, _BUY, _ABANDON_CART, _ABANDON_CHECKOUT = range(4)


class _Customer:
    """Mutable per-customer simulation state (slots: this is touched for every event)."""

    __slots__ = (
        "user_id", "truth", "state", "since", "next_transition", "target", "forced_drift",
        "next_purchase", "next_browse", "busy_until", "gap_ms", "gap_shape", "browse_rate",
        "cat_cum", "favourites", "app_share", "store_share", "p_loyal", "loyal_mean_days", "coupons", "blocked",
    )  # fmt: skip

    def __init__(self, user_id: str, joined_ms: int) -> None:
        self.user_id = user_id
        self.truth = CustomerTruth(user_id, joined_ms, [])
        self.state = NEW
        self.since = joined_ms
        self.next_transition = _NEVER
        self.target = NEW
        self.forced_drift = _NEVER
        self.next_purchase = _NEVER
        self.next_browse = _NEVER
        self.busy_until = joined_ms
        self.favourites: list[Item] = []
        #: Treated coupons whose window is open: (decided, window end, code, offer's generator).
        self.coupons: list[tuple[int, int, str, random.Random]] = []
        #: Windows (start, end] of treated offers that backfired: no natural purchase in them.
        self.blocked: list[tuple[int, int]] = []


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


class _Run:
    """One pass of the simulation; owns all random state so runs never interfere."""

    def __init__(self, config: SimulationConfig, catalogue: Catalogue) -> None:
        self.cfg = config
        self.cat = catalogue
        # Dynamics and content draw from ``rng``; wire noise (ts format, corruption,
        # duplicates) from ``noise``, so corruption never changes what customers do.
        self.rng = random.Random(f"retention-shop-{config.seed}")
        self.noise = random.Random(f"retention-wire-{config.seed}")
        self.seed = config.seed
        #: In every event, session and order id: a shop simulated from another start (a later
        #: period of the same customer ids) has ids of its own, so its events never re-use
        #: those of an earlier period (the workers would dead-letter them as conflicts).
        start = config.start if config.start.tzinfo else config.start.replace(tzinfo=timezone.utc)
        self.run = f"{config.seed}" if start == DEFAULT_START else f"{config.seed}-{start:%Y%m%dT%H%M%S}"
        self.start_ms = _to_ms(config.start)
        self.end_ms = self.start_ms + round(config.days * DAY_MS)
        self.hb_every = config.heartbeat_every // timedelta(milliseconds=1) or 1
        self.next_heartbeat = self.start_ms
        self.heap: list[tuple[int, int, SimRecord]] = []
        self.seq = 0
        self.events = 0
        self.orders = 0
        self.sessions = 0
        self.customers: list[_Customer] = []
        self.truth: dict[str, CustomerTruth] = {}
        self.counts: dict[str, int] = dict.fromkeys((*TOPICS, "invalid", "duplicates"), 0)
        rate = config.new_customers_per_day
        self.next_arrival = self._after(self.start_ms, rate) if rate > 0 else _NEVER
        self._invalid, self._dup = config.invalid_share, config.duplicate_share
        self.effects = OfferEffects()
        self.pending: list[tuple[Offered, int]] = []  # offers learnt, not yet applied
        self.offers: list[OfferTruth] = []
        self.comebacks: list[tuple[int, _Customer]] = []  # (window end, customer): reactivation due
        self.by_id: dict[str, _Customer] = {}

    # --- driver -----------------------------------------------------------------------------

    def iter(self) -> Iterator[SimRecord]:
        for _ in range(self.cfg.customers):
            self._existing_customer()
        counts, heap = self.counts, self.heap
        day_start = self.start_ms
        while day_start < self.end_ms:
            day_end = min(day_start + DAY_MS, self.end_ms)
            while self.next_heartbeat < day_end:
                ts = self.next_heartbeat
                self._push(SimRecord("heartbeats", None, {"ts": self._ts(ts), "source": "simulator"}, ts, True))
                self.next_heartbeat += self.hb_every
            while self.next_arrival < day_end:
                self._arrival(self.next_arrival, day_start, day_end)
                self.next_arrival = self._after(self.next_arrival, self.cfg.new_customers_per_day)
            self._apply_offers(day_start, day_end)
            for customer in self.customers:
                self._advance(customer, day_start, day_end)
            # Everything generated later is at or after day_end, so this prefix is final.
            while heap and heap[0][0] < day_end:
                record = heapq.heappop(heap)[2]
                counts[record.topic] += 1
                if not record.valid:
                    counts["invalid"] += 1
                yield record
            day_start = day_end
        assert not heap, "records beyond the end are dropped before they are queued"

    # --- customers --------------------------------------------------------------------------

    def _new_customer(self, joined_ms: int) -> _Customer:
        rng = self.rng
        c = _Customer(f"u{len(self.customers):06d}", joined_ms)
        gap_days = min(20.0, max(5.0, rng.lognormvariate(math.log(10.0), 0.4)))
        c.gap_ms = gap_days * DAY_MS
        c.gap_shape = rng.uniform(5.0, 12.0)  # gamma shape: gap CV between 0.29 and 0.45
        c.browse_rate = rng.uniform(1.0, 2.5) / gap_days + rng.uniform(0.01, 0.04)
        weights = [rng.gammavariate(0.35, 1.0) + 1e-3 for _ in CATEGORIES]  # Dirichlet(0.35)
        running, cum = 0.0, []
        for w in weights:
            running += w
            cum.append(running)
        c.cat_cum = cum
        c.favourites = [self._pick_item(c) for _ in range(rng.randint(2, 5))]
        c.app_share = rng.random()
        c.store_share = 0.0 if rng.random() < 0.6 else rng.uniform(0.05, 0.4)
        c.p_loyal = 0.7
        c.loyal_mean_days = rng.lognormvariate(math.log(150.0), 0.6)
        self.customers.append(c)
        self.truth[c.user_id] = c.truth
        self.by_id[c.user_id] = c
        self._enter(c, NEW, joined_ms)
        return c

    def _existing_customer(self) -> None:
        """A customer who joined before the window; its state is run forward silently."""
        rng = self.rng
        joined = self.start_ms - int(rng.uniform(0.0, _BURN_IN_MAX_DAYS) * DAY_MS)
        c = self._new_customer(joined)
        while c.next_transition < self.start_ms:
            self._enter(c, c.target, c.next_transition)
        c.busy_until = self.start_ms
        # Purchase phase: somewhere within the customer's current gap.
        if c.state is CHURNED:
            c.next_purchase = _NEVER
        else:
            stretch = 1.5 if c.state is DRIFTING else 1.0
            c.next_purchase = self.start_ms + int(rng.random() * c.gap_ms * stretch)
        c.next_browse = self._after(self.start_ms, self._browse_rate(c, self.start_ms))

    def _arrival(self, nominal: int, day_start: int, day_end: int) -> None:
        joined = self._snap(nominal, day_start, day_end)
        c = self._new_customer(joined)
        rng = self.rng
        c.next_browse = joined  # signs up during a first visit
        if rng.random() < 0.7:  # most newcomers buy within a few days
            c.next_purchase = joined + int(rng.expovariate(1 / 2.5) * DAY_MS)
        else:
            c.next_purchase = joined + self._gap(c, joined)

    def _enter(self, c: _Customer, state: LatentState, t: int) -> None:
        """Switch ``c`` to ``state`` at ``t``; plan the next transition, purchases and visits."""
        rng = self.rng
        previous = c.state
        c.state, c.since = state, t
        c.truth.transitions.append((t, state))
        if state is NEW:
            dwell = _NEW_DWELL_MIN_DAYS + rng.expovariate(1 / _NEW_DWELL_MEAN_DAYS)
            c.target = LOYAL if rng.random() < c.p_loyal else DRIFTING
        elif state is LOYAL:
            dwell = rng.expovariate(1 / c.loyal_mean_days)
            c.target = DRIFTING
            if previous is not NEW:  # coming back: a fresh purchase rhythm
                c.next_purchase = t + int(c.gap_ms * rng.uniform(0.2, 1.0))
        elif state is DRIFTING:
            to_churn = rng.expovariate(1 / _DRIFT_TO_CHURN_MEAN_DAYS)
            to_loyal = rng.expovariate(1 / _DRIFT_TO_LOYAL_MEAN_DAYS)
            dwell = _DRIFT_MIN_DAYS + min(to_churn, to_loyal)
            c.target = CHURNED if to_churn < to_loyal else LOYAL
            if c.next_purchase < _NEVER:  # the next purchase comes later than planned
                c.next_purchase = max(c.next_purchase, t) + int(c.gap_ms * 0.5 * rng.random())
        else:
            dwell = rng.expovariate(1 / self.cfg.reactivation_mean_days)
            c.target = LOYAL
            c.next_purchase = _NEVER
        c.next_transition = t + int(dwell * DAY_MS)
        if t >= self.start_ms:
            c.next_browse = self._after(t, self._browse_rate(c, t))

    def _advance(self, c: _Customer, day_start: int, day_end: int) -> None:
        """Play ``c``'s planned transitions, purchases and visits that are due before ``day_end``."""
        while True:
            tt = c.next_transition if c.next_transition < c.forced_drift else c.forced_drift
            tp, tb = c.next_purchase, c.next_browse
            if tt <= tp and tt <= tb:
                if tt >= day_end:
                    return
                if c.busy_until > tt:  # never switch state in the middle of a visit
                    if c.forced_drift <= c.next_transition:
                        c.forced_drift = c.busy_until
                    else:
                        c.next_transition = c.busy_until
                    continue
                if c.forced_drift <= c.next_transition:
                    c.forced_drift = _NEVER
                    if c.state is NEW or c.state is LOYAL:
                        self._enter(c, DRIFTING, tt)
                else:
                    self._enter(c, c.target, tt)
            elif tp <= tb:
                if tp >= day_end:
                    return
                self._purchase_due(c, tp, day_start)
            else:
                if tb >= day_end:
                    return
                self._browse_due(c, tb, day_start)

    def _purchase_due(self, c: _Customer, t: int, day_start: int) -> None:
        rng = self.rng
        if c.state is DRIFTING and rng.random() < _DRIFT_SKIP:
            self._visit(c, t, day_start, _ABANDON_CART if rng.random() < 0.6 else _BROWSE)
        elif rng.random() < c.store_share:
            self._store_purchase(c, t, day_start)
        else:
            self._visit(c, t, day_start, _BUY)
        c.next_purchase = max(t, c.busy_until) + self._gap(c, t)

    def _browse_due(self, c: _Customer, t: int, day_start: int) -> None:
        cart, checkout = _ABANDON[c.state]
        r = self.rng.random()
        purpose = _ABANDON_CART if r < cart else _ABANDON_CHECKOUT if r < cart + checkout else _BROWSE
        self._visit(c, t, day_start, purpose)
        c.next_browse = self._after(t, self._browse_rate(c, t))

    # --- rates and times ----------------------------------------------------------------------

    def _browse_rate(self, c: _Customer, t: int) -> float:
        """Visits per day, by state; a drifting customer's interest decays."""
        state = c.state
        if state is LOYAL:
            return c.browse_rate
        if state is NEW:
            return c.browse_rate * 1.5
        if state is DRIFTING:
            return max(_CHURNED_BROWSE_PER_DAY, c.browse_rate * math.exp(-(t - c.since) / (_DRIFT_DECAY_DAYS * DAY_MS)))
        return _CHURNED_BROWSE_PER_DAY

    def _gap(self, c: _Customer, t: int) -> int:
        """Time to the next planned purchase: gamma-distributed around the personal gap."""
        gap = c.gap_ms * self.rng.gammavariate(c.gap_shape, 1.0 / c.gap_shape)
        if c.state is NEW:
            gap *= 1.2
        elif c.state is DRIFTING:
            gap *= 1.3 * math.exp(min(8.0, (t - c.since) / (_DRIFT_DECAY_DAYS * DAY_MS)))
        return max(HOUR_MS, int(gap))

    def _after(self, t: int, per_day: float) -> int:
        """The next event of a Poisson process with ``per_day`` events per day."""
        return t + 1 + int(self.rng.expovariate(per_day) * DAY_MS)

    def _snap(self, nominal: int, lo: int, hi: int) -> int:
        """Move ``nominal`` to a typical hour of the same UTC day, if that stays within [lo, hi)."""
        rng = self.rng
        hour = bisect_right(_DIURNAL_CUM, rng.random() * _DIURNAL_CUM[-1])
        t = nominal - nominal % DAY_MS + hour * HOUR_MS + int(rng.random() * HOUR_MS)
        if lo <= t < hi:
            return t
        return nominal if nominal >= lo else lo

    # --- visits and records -------------------------------------------------------------------

    def _pick_item(self, c: _Customer) -> Item:
        rng = self.rng
        if c.favourites and rng.random() < 0.25:
            return rng.choice(c.favourites)
        category = CATEGORIES[bisect_right(c.cat_cum, rng.random() * c.cat_cum[-1])]
        return self.cat.pick(category, rng)

    def _visit(self, c: _Customer, nominal: int, day_start: int, purpose: int) -> None:
        """A session of clicks; ``_BUY`` ends in checkout and a purchase."""
        rng = self.rng
        lo = max(day_start, c.since, c.busy_until)
        hi = c.next_transition if c.next_transition < c.forced_drift else c.forced_drift
        t = self._snap(nominal, lo, hi)
        self.sessions += 1
        sid = f"s-{self.run}-{self.sessions}"
        channel = "app" if rng.random() < c.app_share else "web"
        click = self._click
        first_category = CATEGORIES[bisect_right(c.cat_cum, rng.random() * c.cat_cum[-1])]
        click(c, t, "page_view", sid, channel, category=first_category if rng.random() < 0.4 else None)
        lo_steps, hi_steps = _STEPS[c.state]
        steps = rng.randint(lo_steps, hi_steps) if purpose == _BROWSE else rng.randint(0, 3)
        viewed: list[Item] = []
        for _ in range(steps):
            t += 4_000 + int(rng.random() * 80_000)
            r = rng.random()
            if r < 0.55:
                item = self._pick_item(c)
                viewed.append(item)
                click(c, t, "product_view", sid, channel, item=item)
            elif r < 0.75:
                item = self._pick_item(c)
                query = rng.choice(SEARCH_TERMS[item.category])
                click(c, t, "search", sid, channel, query=query)
                t += 3_000 + int(rng.random() * 30_000)
                viewed.append(item)
                click(c, t, "product_view", sid, channel, item=item)
            elif r < 0.92 or not viewed:
                category = CATEGORIES[bisect_right(c.cat_cum, rng.random() * c.cat_cum[-1])]
                click(c, t, "page_view", sid, channel, category=category)
            else:
                click(c, t, "wishlist", sid, channel, item=viewed[-1])
        if purpose != _BROWSE:
            n = 1 if purpose != _BUY else (1 if rng.random() < 0.65 else 2 if rng.random() < 0.7 else 3)
            cart: list[Item] = []
            for _ in range(n):
                item = rng.choice(viewed) if viewed and rng.random() < 0.5 else self._pick_item(c)
                if item in cart:
                    continue
                if item not in viewed:
                    t += 4_000 + int(rng.random() * 60_000)
                    click(c, t, "product_view", sid, channel, item=item)
                t += 3_000 + int(rng.random() * 40_000)
                click(c, t, "add_to_cart", sid, channel, item=item)
                cart.append(item)
            if rng.random() < 0.12 or (purpose == _ABANDON_CART and rng.random() < 0.3):
                extra = self._pick_item(c)  # added, then thought better of it
                t += 5_000 + int(rng.random() * 40_000)
                click(c, t, "add_to_cart", sid, channel, item=extra)
                t += 5_000 + int(rng.random() * 90_000)
                click(c, t, "remove_from_cart", sid, channel, item=extra)
            if purpose != _ABANDON_CART:
                t += 10_000 + int(rng.random() * 120_000)
                click(c, t, "checkout_start", sid, channel)
            if purpose == _BUY:
                t += 30_000 + int(rng.random() * 210_000)
                self._purchase(c, t, channel, cart)
        c.busy_until = t + 1

    def _store_purchase(self, c: _Customer, nominal: int, day_start: int) -> None:
        """A purchase in a physical store: no clicks before it."""
        rng = self.rng
        lo = max(day_start, c.since, c.busy_until)
        hi = c.next_transition if c.next_transition < c.forced_drift else c.forced_drift
        t = self._snap(nominal, lo, hi)
        n = 1 if rng.random() < 0.5 else rng.randint(2, 4)
        cart: list[Item] = []
        for _ in range(n):
            item = self._pick_item(c)
            if item not in cart:
                cart.append(item)
        self._purchase(c, t, "store", cart)
        c.busy_until = t + 1

    def _purchase(self, c: _Customer, t: int, channel: str, cart: list[Item]) -> None:
        rng = self.rng
        self.orders += 1
        order_id = f"o-{self.run}-{self.orders}"
        lines, total_cents = [], 0
        for item in cart:
            quantity = 1 if rng.random() < 0.8 else 2 if rng.random() < 0.75 else 3
            cents = round(item.price * 100)
            if rng.random() < 0.1:  # on sale
                cents = round(cents * rng.uniform(0.7, 0.9))
            total_cents += quantity * cents
            lines.append({"item_id": item.item_id, "category": item.category, "quantity": quantity,
                          "unit_price": cents / 100})  # fmt: skip
        value = {"event_id": self._eid(), "user_id": c.user_id, "ts": self._ts(t), "order_id": order_id,
                 "items": lines, "total": total_cents / 100, "currency": "EUR", "channel": channel}  # fmt: skip
        blocked = bool(c.blocked) and any(start < t <= end for start, end in c.blocked)
        if c.coupons and not blocked:
            self._carry_coupon(c, t, value)
        if blocked:  # an offer backfired: the customer does not buy (every draw above is made all the same)
            c.truth.natural.append(t)
            c.truth.suppressed.append(t)
        elif self._emit("purchases", c.user_id, value, t):
            c.truth.purchases += 1
            c.truth.spend = round(c.truth.spend + total_cents / 100, 2)
            c.truth.natural.append(t)
        # The experience of this order; unhappy customers review more and may start drifting.
        rating = bisect_right(_RATING_CUM[c.state], rng.random()) + 1
        if rng.random() >= _REVIEW_P[rating]:
            return
        nominal = t + int((0.5 + rng.expovariate(1 / 4.0)) * DAY_MS)
        review_ts = self._snap(nominal, t + HOUR_MS, _NEVER)  # written at a waking hour, days later
        item = rng.choice(cart)
        review = {"event_id": self._eid(), "user_id": c.user_id, "ts": self._ts(review_ts),
                  "item_id": item.item_id, "rating": rating}  # fmt: skip
        if rng.random() < 0.92:
            review["text"] = review_text(rng, rating, item.category)
        if rng.random() < 0.85:
            review["order_id"] = order_id
        if not blocked:  # nor review what it did not buy
            self._emit("reviews", c.user_id, review, review_ts)
        if rating <= 2 and (c.state is LOYAL or c.state is NEW) and rng.random() < _BAD_REVIEW_DRIFT:
            c.forced_drift = min(c.forced_drift, review_ts)

    # --- responses to retention actions (streams/simulation/offers.py) ----------------------------

    def _apply_offers(self, day_start: int, day_end: int) -> None:
        """Apply the offers delivered before ``day_end``; everything they cause is at or after
        ``day_start`` (the records before it are out already). Comebacks due in the day too."""
        due = [(o, d) for o, d in self.pending if d < day_end]
        if due:
            self.pending = [(o, d) for o, d in self.pending if d >= day_end]
            for offer, delivered in due:
                self._apply_offer(offer, max(delivered, day_start))
        if self.comebacks:
            for end, c in [x for x in self.comebacks if x[0] < day_end]:
                if c.state is DRIFTING or c.state is CHURNED:
                    self._enter(c, LOYAL, max(end, day_start, c.busy_until, c.since))
            self.comebacks = [x for x in self.comebacks if x[0] >= day_end]

    def _apply_offer(self, offer: Offered, start: int) -> None:
        c = self.by_id.get(offer.user_id)
        if c is None:
            return
        fx = self.effects
        orng = random.Random(f"offer-{self.seed}-{offer.action_id}")  # common random numbers: the same for both groups
        end = offer.decided_ms + fx.window_ms
        p_works = fx.p_works(offer.kind, offer.rule, c.state.value)
        u_works, delay = orng.random(), orng.expovariate(1 / fx.delay_days)
        t_extra = start + int(delay * DAY_MS)
        works = u_works < p_works and t_extra <= end and t_extra < self.end_ms
        p_backfire = fx.p_backfire(offer.kind, c.state.value)
        backfires = p_works <= u_works < p_works + p_backfire
        u_react = orng.random()
        self.offers.append(OfferTruth(offer, end, c.state.value, p_works * p_in_window(fx, start, end), works,
                                      start_ms=start, p_works=p_works, extra_ms=t_extra if works else None,
                                      backfires=backfires, p_backfire=p_backfire))
        if offer.group != "treatment":
            return  # the control group was sent nothing
        if backfires:  # put off buying: to the window's end, or for ``backfire_days`` from now (it leaves)
            until = end if fx.backfire_days is None else start + int(fx.backfire_days * DAY_MS)
            c.blocked = [(s, e) for s, e in c.blocked if e >= start] + [(start, until)]
        self._outcomes(offer, start, orng, works)
        if offer.code is not None:
            c.coupons.append((offer.decided_ms, end, offer.code, orng))
        if works:
            self._extra_purchase(c, offer, t_extra, orng)
            if u_react < fx.reactivate:
                self.comebacks.append((end, c))

    def _outcomes(self, offer: Offered, t: int, orng: random.Random, works: bool) -> None:
        fx = self.effects
        if orng.random() >= fx.delivered:
            return
        self._push_valid("action-outcomes", offer.user_id, {"action_id": offer.action_id, "user_id": offer.user_id,
                         "ts": format_ts(t), "outcome": "delivered"}, t)  # fmt: skip
        if not (works or orng.random() < fx.opened):
            return
        t += int(orng.expovariate(2.0) * DAY_MS)
        self._push_valid("action-outcomes", offer.user_id, {"action_id": offer.action_id, "user_id": offer.user_id,
                         "ts": format_ts(t), "outcome": "opened"}, t)  # fmt: skip
        outcome = "clicked" if works or orng.random() < fx.clicked else "unsubscribed" if orng.random() < fx.unsubscribed else None
        if outcome is not None:
            t += 30_000 + int(orng.random() * 600_000)
            self._push_valid("action-outcomes", offer.user_id, {"action_id": offer.action_id, "user_id": offer.user_id,
                             "ts": format_ts(t), "outcome": outcome}, t)  # fmt: skip

    def _extra_purchase(self, c: _Customer, offer: Offered, t: int, orng: random.Random) -> None:
        """The purchase an offer brought: it names the action (and the code of a coupon)."""
        item = orng.choice(c.favourites) if c.favourites else self.cat.pick(CATEGORIES[0], orng)
        cents = round(item.price * 100)
        value = {"event_id": f"e-offer-{offer.action_id}", "user_id": c.user_id, "ts": format_ts(t),
                 "order_id": f"o-offer-{offer.action_id}", "currency": "EUR", "channel": "web", "total": cents / 100,
                 "items": [{"item_id": item.item_id, "category": item.category, "quantity": 1, "unit_price": cents / 100}],
                 "action_id": offer.action_id}  # fmt: skip
        if offer.code is not None:
            value["coupon_code"] = offer.code
        if self._push_valid("purchases", c.user_id, value, t):
            c.truth.purchases += 1
            c.truth.spend = round(c.truth.spend + cents / 100, 2)
            c.truth.extra.append((t, offer.action_id))

    def _carry_coupon(self, c: _Customer, t: int, value: dict) -> None:
        """A natural purchase in an open coupon window may use the coupon (no uplift: it was coming)."""
        c.coupons = [x for x in c.coupons if x[1] >= t]
        for decided, _, code, orng in c.coupons:
            if decided < t and orng.random() < self.effects.carry:
                value["coupon_code"] = code
                return

    def _push_valid(self, topic: str, key: str, value: dict, t: int) -> bool:
        """Queue a well-formed record (responses are never corrupted: the truth must be seen)."""
        if t >= self.end_ms:
            return False
        self._push(SimRecord(topic, key, value, t, True))
        return True

    def _click(self, c: _Customer, t: int, kind: str, sid: str, channel: str,
               item: Item | None = None, category: str | None = None, query: str | None = None) -> None:  # fmt: skip
        # Inlined _eid() and _ts(): this is the hottest path of the simulation.
        self.events += 1
        noise = self.noise.random
        value = {"event_id": f"e-{self.run}-{self.events}", "user_id": c.user_id,
                 "ts": t if noise() < 0.1 else format_ts(t), "kind": kind, "session_id": sid}  # fmt: skip
        if item is not None:
            value["item_id"] = item.item_id
            value["category"] = item.category
        elif category is not None:
            value["category"] = category
        if query is not None:
            value["query"] = query
        if noise() < 0.97:  # optional in the contract; some producers leave it out
            value["channel"] = channel
        self._emit("clicks", c.user_id, value, t)

    def _eid(self) -> str:
        self.events += 1
        return f"e-{self.run}-{self.events}"

    def _ts(self, t: int) -> str | int:
        """About 10 % of producers send integer epoch milliseconds instead of RFC 3339."""
        return t if self.noise.random() < 0.1 else format_ts(t)

    def _push(self, record: SimRecord) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (record.ts_ms, self.seq, record))

    def _emit(self, topic: str, key: str, value: dict, t: int) -> bool:
        """Queue a record (maybe malformed, maybe re-sent); True if a well-formed one was queued."""
        if t >= self.end_ms:
            return False
        noise = self.noise
        if self._invalid and noise.random() < self._invalid:
            raw, raw_key = malformed(topic, value, noise)
            self._push(SimRecord(topic, raw_key, raw, t, False))
            return False
        record = SimRecord(topic, key, value, t, True)
        self._push(record)
        if self._dup and noise.random() < self._dup:
            again = t + 1_000 + int(noise.random() * 119_000)
            if again < self.end_ms:
                self.counts["duplicates"] += 1
                self._push(SimRecord(topic, key, copy.deepcopy(value), again, True))
        return True


class Shop:
    """The simulated shop: lazily yields records in event-time order and knows the truth.

    ``truth()`` and ``state_at()`` use the truth of the last fully consumed
    ``records()`` pass; if there is none, they run a private pass first (the
    simulation is deterministic, so it is the same truth ``records()`` yields).
    """

    def __init__(self, config: SimulationConfig, effects: OfferEffects | None = None) -> None:
        self.config = config
        self.effects = effects or OfferEffects()
        self._run: _Run | None = None
        self._catalogue = build_catalogue()
        self._counts: dict[str, int] = dict.fromkeys((*TOPICS, "invalid", "duplicates"), 0)
        self._truth: dict[str, CustomerTruth] | None = None
        self._transition_times: dict[str, list[int]] = {}

    @property
    def catalogue(self) -> Catalogue:
        """The products customers view and buy."""
        return self._catalogue

    @property
    def counts(self) -> dict[str, int]:
        """Records yielded so far by the current/last ``records()`` pass, per topic (malformed and
        re-sent records included), plus ``invalid`` (malformed) and ``duplicates`` (re-sent; counted
        when queued, so complete once the pass is exhausted)."""
        return dict(self._counts)

    def records(self) -> Iterator[SimRecord]:
        """All records in non-decreasing ``ts_ms`` order, generated day by day (memory ~ one day)."""
        run = _Run(self.config, self._catalogue)
        run.effects = self.effects
        self._run = run
        self._counts = run.counts
        yield from run.iter()
        self._set_truth(run.truth)

    def offer(self, action: object, delivered_at_ms: int) -> None:
        """The marketing system delivers ``action`` (a RetentionAction, or its JSON as a dict)
        at ``delivered_at_ms``, during the current ``records()`` pass: the customer responds
        from the first day not yet generated (control decisions are only recorded).

        Responses follow :attr:`effects` (:mod:`streams.simulation.offers`)."""
        if self._run is None:
            raise RuntimeError("offers are made during a records() pass")
        offer = Offered.of(action)
        self._run.pending.append((offer, max(delivered_at_ms, offer.decided_ms)))

    def offers(self, matured_by_ms: int | None = None) -> list[OfferTruth]:
        """The decisions the customers learnt of in the current or last pass, with both
        potential outcomes; only those whose window ended by ``matured_by_ms`` (default:
        all whose window ended before the simulation's end)."""
        if self._run is None:
            return []
        run = self._run
        until = run.end_ms if matured_by_ms is None else matured_by_ms
        out = []
        for o in run.offers:
            if o.window_end_ms > until:
                continue
            truth = run.truth[o.offer.user_id]
            i = bisect_right(truth.natural, o.offer.decided_ms)  # natural purchases are in time order
            # Y0: without this offer, a purchase in the window: a natural one, or one another offer caused
            o.y0 = (i < len(truth.natural) and truth.natural[i] <= o.window_end_ms) or any(
                o.offer.decided_ms < t <= o.window_end_ms and aid != o.offer.action_id for t, aid in truth.extra
            )
            out.append(o)
        return out

    def uplift_truth(self, matured_by_ms: int | None = None) -> dict[str, dict[str, object]]:
        """True uplift per kind and per ``kind/rule`` (:func:`~streams.simulation.offers.truth_report`)."""
        return truth_report(self.offers(matured_by_ms))

    def itt_truth(self, matured_by_ms: int | None = None, control_by: str = "customer") -> dict[str, dict[str, object]]:
        """True intention-to-treat uplift per kind and per ``kind/rule``, over the customers whose
        window after their first decision ended by ``matured_by_ms``
        (:func:`~streams.simulation.offers.itt_truth_report`); ``control_by``: the policy's
        (what an assignment to treatment decides: all the customer's offers, or one kind's)."""
        if self._run is None:
            return {}
        run = self._run
        until = run.end_ms if matured_by_ms is None else matured_by_ms
        natural = {u: t.natural for u, t in run.truth.items()}
        extra = {u: t.extra for u, t in run.truth.items()}
        return itt_truth_report(run.offers, natural, extra, self.effects, until, control_by)

    def truth(self) -> dict[str, CustomerTruth]:
        """Ground truth per user_id: join time, state transitions, purchases and spend."""
        if self._truth is None:
            run = _Run(self.config, self._catalogue)
            for _ in run.iter():
                pass
            self._set_truth(run.truth)
        assert self._truth is not None
        return self._truth

    def state_at(self, user_id: str, ts_ms: int) -> LatentState:
        """The latent state of ``user_id`` at ``ts_ms`` (KeyError: unknown user; ValueError: not yet joined)."""
        truth = self.truth()[user_id]
        i = bisect_right(self._transition_times[user_id], ts_ms)
        if i == 0:
            raise ValueError(f"{user_id} joined at {truth.joined_ms}, after {ts_ms}")
        return truth.transitions[i - 1][1]

    def _set_truth(self, truth: dict[str, CustomerTruth]) -> None:
        self._truth = truth
        self._transition_times = {u: [t for t, _ in c.transitions] for u, c in truth.items()}
