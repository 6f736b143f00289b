"""Per-user state and how one event changes it.

The state is small and bounded (it does not grow with a user's history) and is stored
as compact msgpack in a RocksDB table. Three rules make it replay exactly:

- **Once per event.** The digests of the most recent event ids are kept, so a
  redelivered or re-sent event counts once.
- **Order does not matter within the allowed lateness.** Windowed counters live in
  event-time tiles (:mod:`streams.domain.windows`); what depends on order (abandoned
  carts, sessions) is kept as a short sorted record of recent times and only
  *finalized* once the clock is past it by the allowed lateness. Gaps between purchases
  come from the first and last purchase and the latest purchases by event time, which
  no arrival order changes. Any arrival order within the lateness ends in the same state.
- **Too late is still counted.** An event older than the clock minus the lateness
  updates the lifetime counters only; its windows are closed and stay untouched.

Money is kept in integer cents, so sums do not depend on the order of additions. The
contract allows any total >= 0 (``1e308`` included); an amount beyond :data:`MAX_CENTS`
counts as that much, so sums stay 64-bit integers in any state and window.
"""

from __future__ import annotations

import bisect
import enum
import math
from dataclasses import dataclass
from hashlib import blake2b

import msgspec

from streams.domain.events import Click, ClickKind, Outcome, OutcomeKind, Purchase, Review, UserEvent, plain_int
from streams.domain.sketches import hash32, kmv_add
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR
from streams.domain.uplift import Entered, Mine
from streams.domain.windows import COLUMNS, Tiles
from models.score import is_negative

#: How many recent event-id digests a user keeps for de-duplication.
RECENT_IDS = 64
#: Bounds of the short records of recent times (each keeps the latest by event time).
RECENT_SESSIONS = 16
RECENT_SEARCHES = 32
RECENT_PURCHASES = 16
RECENT_CARTS = 8
#: Item interactions the recommender reads (one entry per item, the latest RECENT_ITEMS by
#: time) and the items bought (the latest BOUGHT_ITEMS), which it never recommends.
RECENT_ITEMS = 20
BOUGHT_ITEMS = 20
#: Kinds of item interaction, lightest first (an entry keeps the heaviest seen).
ITEM_KINDS = ("product_view", "wishlist", "add_to_cart", "purchase")
#: Per click kind, read once per click: its tile column; with the sessions column (a new
#: session's first click); its ITEM_KINDS index (None: not an item interaction).
_KIND_COLUMN = {kind: (COLUMNS.index(kind.value),) for kind in ClickKind}
_KIND_SESSION = {kind: (COLUMNS.index(kind.value), COLUMNS.index("sessions")) for kind in ClickKind}
_SESSIONS = (COLUMNS.index("sessions"),)
_ITEM_KIND = {kind: ITEM_KINDS.index(kind.value) if kind.value in ITEM_KINDS else None for kind in ClickKind}
_CART_KINDS = (ClickKind.ADD_TO_CART, ClickKind.CHECKOUT_START)


@dataclass(frozen=True)
class StateConfig:
    """How events fold into state: lateness, cart timeout, sessions without an id."""

    allowed_lateness_ms: int = MS_PER_HOUR
    cart_timeout_ms: int = 24 * MS_PER_HOUR
    session_gap_ms: int = 30 * 60_000


class Applied(enum.Enum):
    OK = "ok"
    DUPLICATE = "duplicate"
    LATE = "late"  # beyond the allowed lateness: lifetime counters only
    #: The event id of an event already applied, with other content: a producer re-used an
    #: id. Not applied (the first one stands) and dead-lettered with the reason.
    CONFLICT = "conflict"

    @property
    def counted(self) -> bool:
        """The event changed the state (on time or late); a copy or a conflicting re-use did not."""
        return self is Applied.OK or self is Applied.LATE


class PendingScore(msgspec.Struct, array_like=True):
    """A scoring point waiting for its labels to mature (:mod:`streams.domain.labels`).

    Fields after ``features`` were added with issue 4; their defaults keep states encoded
    before it loadable (an old point counts its purchase days from then on).
    """

    ts: int
    features: list[float]
    #: Distinct UTC purchase days seen so far in (ts, ts + horizon]: the loyalty label.
    days: int = 0
    #: UTC day index (ts // MS_PER_DAY) of the latest purchase day counted, -1 for none.
    last_day: int = -1
    #: The churn label (0) was already resolved by a purchase inside the horizon.
    churn_done: bool = False
    #: What the live learners predicted at ``ts`` (None: not recorded), for prequential scores.
    churn_p: float | None = None
    loyalty_p: float | None = None
    #: What each learner's two candidates predicted at ``ts``: its prior and its River
    #: pipeline (None: not recorded, or the pipeline had learned nothing yet). The trainer
    #: compares them on the label (:class:`models.churn.Gate`), not on predictions made
    #: when the label matures.
    churn_prior_p: float | None = None
    churn_learned_p: float | None = None
    loyalty_prior_p: float | None = None
    loyalty_learned_p: float | None = None


class Acted(msgspec.Struct, array_like=True):
    """The latest retention action of one kind admitted for a user (the cooldown's start)."""

    ts: int
    action_id: str


class ItemTouch(msgspec.Struct, array_like=True):
    """The customer's latest interaction with one item (``kind``: index in ITEM_KINDS)."""

    item: str
    kind: int
    ts: int


class BanditTrace(msgspec.Struct, array_like=True):
    """What a bandit needs of its decision at maturity: the bandit (``trigger/action``), the
    context it saw (values in :data:`models.bandit.CONTEXT` order) and the reward's terms."""

    bandit: str
    context: list[float]
    gain: float = 1.0
    cost: float = 0.0


class UpliftTrace(msgspec.Struct, array_like=True):
    """What the uplift model of the decision's kind learns at maturity (:mod:`models.uplift`):
    the churn model's inputs at the decision (MODEL_FEATURES order) and whether the policy
    explored it (decided at random)."""

    features: list[float]
    explored: bool = False


class Awaiting(msgspec.Struct, array_like=True):
    """A retention decision whose attribution window is still open (:mod:`streams.domain.attribution`)."""

    action_id: str
    #: Event time of the decision: the window is (ts, ts + window].
    ts: int
    kind: str
    rule: str
    group: str
    #: The coupon code of a coupon action (a purchase carrying it is a redemption).
    code: str | None = None
    converted: bool = False
    redeemed: bool = False
    #: Set when a bandit chose the decision's rule (its reward goes to the trainer at maturity).
    bandit: BanditTrace | None = None
    #: Set when the policy learns the uplift of the decision's kind (appended: older states load).
    uplift: UpliftTrace | None = None


class Consent(msgspec.Struct, array_like=True):
    """What the customer said last (by event time) about one kind of retention action."""

    allowed: bool
    ts: int


class UserState(msgspec.Struct, array_like=True):
    user_id: str
    #: The latest event-time clock this state has seen (ms).
    clock: int = 0
    first_seen: int = 0
    last_seen: int = 0
    tiles: Tiles = msgspec.field(default_factory=Tiles)
    clicks: int = 0
    purchases: int = 0
    spend_cents: int = 0
    first_purchase: int | None = None
    last_purchase: int | None = None
    #: Sorted times of the latest purchases by event time (gap spread, cart checks).
    purchase_times: list[int] = msgspec.field(default_factory=list)
    #: Sorted times of the latest searches.
    search_times: list[int] = msgspec.field(default_factory=list)
    #: Open cart episodes: [episode index (ts // cart timeout), earliest cart ts].
    carts: list[list[int]] = msgspec.field(default_factory=list)
    carts_abandoned: int = 0
    #: Recent sessions: [32-bit digest of the session key, first event ts].
    sessions: list[list[int]] = msgspec.field(default_factory=list)
    items_seen: list[int] = msgspec.field(default_factory=list)  # KMV sketch
    categories_seen: list[int] = msgspec.field(default_factory=list)  # KMV sketch
    reviews: int = 0
    rating_sum: int = 0
    last_review: int = 0
    last_rating: int = 0
    #: Sentiment of review texts in thousandths (integers: the mean does not depend on order).
    texts: int = 0
    sentiment_milli_sum: int = 0
    last_sentiment_milli: int = 0
    negative_reviews: int = 0
    unsubscribed: bool = False
    recent_ids: list[int] = msgspec.field(default_factory=list)
    pending: list[PendingScore] = msgspec.field(default_factory=list)
    #: Event time of the last lapse check; a check after last_purchase belongs to this episode.
    lapse_checked: int | None = None
    #: last_purchase of the lapse episode a retention action was already emitted for.
    lapse_acted: int | None = None
    #: Event time of the last snapshot published on user-scores (None: never).
    scores_at: int | None = None
    #: Offset of the last record applied from each source partition, by 32-bit digest of the
    #: topic name (a user is read from one partition of each topic): a record read again
    #: after a crash or a rebalance is recognised however far back the last commit was.
    positions: dict[int, int] = msgspec.field(default_factory=dict)
    #: Event time of the last scoring sweep of this user (None: never swept).
    swept_at: int | None = None
    #: Fields below were added with issue 5's guard rails; their defaults keep states
    #: encoded before it loadable.
    #: Latest event time of an add_to_cart or checkout_start (the "checking out" guard).
    cart_touched: int | None = None
    #: Latest admitted action per kind (at most one per action kind: bounded).
    acted: dict[str, Acted] = msgspec.field(default_factory=dict)
    #: Added for the recommendations (issue 5): recent item interactions, sorted by time,
    #: and the latest items bought, oldest first. Defaults keep older states loadable.
    items: list[ItemTouch] = msgspec.field(default_factory=list)
    bought: list[str] = msgspec.field(default_factory=list)
    #: Added with issue 5's measurement (default: states encoded before it load):
    #: decisions whose attribution window is open, oldest first (window-limited, capped).
    awaiting: list[Awaiting] = msgspec.field(default_factory=list)
    #: Encoded model-labels records made for this user whose delivery was not yet confirmed
    #: when the state was written (a transactional outbox, docs/models.md): sent again after
    #: a restart, so a state that survived a crash never hides labels that did not.
    outbox: list[bytes] = msgspec.field(default_factory=list)
    #: Added with the per-customer uplift interval (issue 5; default: older states load):
    #: this customer's matured decisions and conversions by ``kind|rule|group`` (one entry
    #: per rule that fired for it), whose squares the uplift's cluster variance sums.
    attributed: dict[str, Mine] = msgspec.field(default_factory=dict)
    #: Added with the intention-to-treat contrast (issue 5; default: older states load): the
    #: customer's first decision of each kind (key ``kind``) and of each rule (``kind|rule``)
    #: and what followed in the window after it (at most one entry per kind and per rule).
    entered: dict[str, Entered] = msgspec.field(default_factory=dict)
    #: Added for BG/NBD's repeat purchase *days* (issue 4; 0 in older states, which
    #: :func:`purchase_day_count` estimates): distinct UTC days with a purchase.
    purchase_days: int = 0
    #: Added with issue 17 (default: older states load): a 32-bit digest of the content of
    #: each event of ``recent_ids`` (aligned from the end), to tell a re-sent copy from a
    #: different event re-using its id.
    recent_content: list[int] = msgspec.field(default_factory=list)
    #: Added for the order-value features (issue 19; 0 in older states): the total of the
    #: first and of the latest purchase (at equal times the larger), and the sum of the
    #: squared purchase totals in cents (integers, capped at 2^62: every arrival order gives the same).
    first_order_cents: int = 0
    last_order_cents: int = 0
    order_cents_sq: int = 0
    #: Added with customers' privacy (issue 18; default: older states load): the marketing
    #: permissions stated on the ``consents`` topic, per action kind (the guard rails honour them).
    consent: dict[str, Consent] = msgspec.field(default_factory=dict)


_encoder = msgspec.msgpack.Encoder(enc_hook=plain_int)
_decoder = msgspec.msgpack.Decoder(UserState)


def dump_state(state: UserState) -> bytes:
    return _encoder.encode(state)


def load_state(raw: bytes) -> UserState:
    return _decoder.decode(raw)


def redelivered(state: UserState, topic: str, offset: int) -> bool:
    """True if the record at ``offset`` of ``topic`` (the user's partition) was applied already.

    The event-id digests cover re-sent copies (new offsets) and a short history only; a
    consumer resumes from its last commit, which can be any number of a user's records back.

    >>> s = UserState("u1"); mark_applied(s, "clicks", 41)
    >>> redelivered(s, "clicks", 41), redelivered(s, "clicks", 42), redelivered(s, "purchases", 0)
    (True, False, False)
    """
    return state.positions.get(hash32(topic), -1) >= offset


def mark_applied(state: UserState, topic: str, offset: int) -> None:
    state.positions[hash32(topic)] = offset


def event_digest(event: UserEvent) -> int:
    """64-bit digest of the event's identity (outcomes are identified by action and outcome)."""
    identity = f"{event.action_id}\x1f{event.outcome.value}" if isinstance(event, Outcome) else event.event_id
    return int.from_bytes(blake2b(identity.encode(), digest_size=8).digest(), "big")


_content_encoder = msgspec.json.Encoder(enc_hook=plain_int)


def content_digest(event: UserEvent) -> int:
    """32-bit digest of everything an event says (its id included): equal for re-sent copies."""
    return int.from_bytes(blake2b(_content_encoder.encode(event), digest_size=4).digest(), "big")


def conflict_reason(event: UserEvent) -> str:
    """The dead letter's reason for an :attr:`Applied.CONFLICT`."""
    identity = f"action_id {event.action_id} outcome {event.outcome.value}" if isinstance(event, Outcome) else f"event_id {event.event_id!r}"
    return f"{identity} was applied before with other content: re-used id (the first event stands)"


def apply_event(state: UserState, event: UserEvent, now: int, cfg: StateConfig, sentiment: float | None = None) -> Applied:
    """Fold one event into the state at event-time clock ``now``.

    ``sentiment`` is the review text's score in [-1, 1] (reviews only). A duplicate
    changes nothing; an event older than ``now`` minus the allowed lateness counts in
    the lifetime figures only.
    """
    digest = event_digest(event)
    content = content_digest(event)
    if digest in state.recent_ids:
        back = len(state.recent_ids) - state.recent_ids.index(digest)  # aligned from the end
        if back <= len(state.recent_content) and state.recent_content[-back] != content:
            return Applied.CONFLICT
        return Applied.DUPLICATE
    state.recent_ids.append(digest)
    state.recent_content.append(content)
    if len(state.recent_ids) > RECENT_IDS:
        del state.recent_ids[0]
    if len(state.recent_content) > RECENT_IDS:
        del state.recent_content[0]
    now = max(now, state.clock)
    ts = event.ts
    on_time = ts >= now - cfg.allowed_lateness_ms
    if not isinstance(event, Outcome):  # our own actions' outcomes are not the customer's activity
        if not state.first_seen or ts < state.first_seen:  # (min and max, without their calls)
            state.first_seen = ts
        if ts > state.last_seen:
            state.last_seen = ts
    if isinstance(event, Click):
        _apply_click(state, event, now, on_time, cfg)
    elif isinstance(event, Purchase):
        _apply_purchase(state, event, now, on_time)
    elif isinstance(event, Review):
        _apply_review(state, event, sentiment)
    elif isinstance(event, Outcome):
        state.unsubscribed = state.unsubscribed or event.outcome is OutcomeKind.UNSUBSCRIBED
    advance(state, now, cfg)
    return Applied.OK if on_time else Applied.LATE


def _apply_click(state: UserState, click: Click, now: int, on_time: bool, cfg: StateConfig) -> None:
    state.clicks += 1
    kind = click.kind
    if click.item_id is not None:
        kmv_add(state.items_seen, click.item_id)
        item_kind = _ITEM_KIND[kind]
        if item_kind is not None:
            touch_item(state, click.item_id, item_kind, click.ts)
    if click.category is not None:
        kmv_add(state.categories_seen, click.category)
    if not on_time:
        return
    ts = click.ts
    _open_session(state, click, now, cfg)
    if kind is ClickKind.SEARCH:
        _keep_latest(state.search_times, ts, RECENT_SEARCHES)
    elif kind in _CART_KINDS:
        state.cart_touched = ts if state.cart_touched is None else max(state.cart_touched, ts)
        episode = ts // cfg.cart_timeout_ms
        for cart in state.carts:
            if cart[0] == episode:
                cart[1] = min(cart[1], ts)
                break
        else:
            state.carts.append([episode, ts])
            if len(state.carts) > RECENT_CARTS:
                state.carts.remove(min(state.carts, key=lambda c: c[1]))


def _open_session(state: UserState, click: Click, now: int, cfg: StateConfig) -> None:
    """Count the click in the tile of its time and a session in the tile of its first
    event, moving it if an earlier event of the same session arrives late. Without a
    session id, a session is the channel's clicks in one ``session_gap`` bucket of event
    time. (The click's and a new session's counts go to the same tiles in one pass.)"""
    ts = click.ts
    key = click.session_id or f"{click.channel.value if click.channel else '-'}|{ts // cfg.session_gap_ms}"
    digest = hash32(key)
    tiles = state.tiles
    for session in state.sessions:
        if session[0] == digest:
            tiles.bump(ts, now, _KIND_COLUMN[click.kind])
            if ts < session[1]:
                tiles.bump(session[1], now, _SESSIONS, -1)
                tiles.bump(ts, now, _SESSIONS)
                session[1] = ts
            return
    state.sessions.append([digest, ts])
    tiles.bump(ts, now, _KIND_SESSION[click.kind])
    if len(state.sessions) > RECENT_SESSIONS:
        state.sessions.remove(min(state.sessions, key=lambda s: s[1]))


#: 100 billion currency units in cents: the most one purchase, or a customer's lifetime
#: spend, counts for (saturated beyond); a million such purchases still fit in an int64.
MAX_CENTS = 10**13


def cents_of(amount: float) -> int:
    """An amount of currency in whole cents, saturated at :data:`MAX_CENTS`.

    >>> cents_of(12.345), cents_of(1e308) == MAX_CENTS
    (1234, True)
    """
    return MAX_CENTS if amount * 100 >= MAX_CENTS else round(amount * 100)


def _apply_purchase(state: UserState, purchase: Purchase, now: int, on_time: bool) -> None:
    cents = cents_of(purchase.total)
    state.purchases += 1
    state.spend_cents = min(state.spend_cents + cents, MAX_CENTS)
    ts = purchase.ts
    if state.first_purchase is None or (ts, -cents) < (state.first_purchase, -state.first_order_cents):
        state.first_order_cents = cents
    if state.last_purchase is None or (ts, cents) > (state.last_purchase, state.last_order_cents):
        state.last_order_cents = cents
    state.order_cents_sq = min(state.order_cents_sq + cents * cents, MAX_CENTS_SQ)
    state.first_purchase = ts if state.first_purchase is None else min(state.first_purchase, ts)
    state.last_purchase = ts if state.last_purchase is None else max(state.last_purchase, ts)
    _count_purchase_day(state, ts)
    _keep_latest(state.purchase_times, ts, RECENT_PURCHASES)
    for item in dict.fromkeys(line.item_id for line in purchase.items):
        touch_item(state, item, ITEM_KINDS.index("purchase"), ts)
        if item in state.bought:
            state.bought.remove(item)
        state.bought.append(item)
        if len(state.bought) > BOUGHT_ITEMS:
            del state.bought[0]
    if on_time:
        state.tiles.add(ts, {"purchases": 1, "spend_cents": cents}, now)


def _apply_review(state: UserState, review: Review, sentiment: float | None) -> None:
    state.reviews += 1
    state.rating_sum += review.rating
    milli = round(1000 * sentiment) if sentiment is not None else 0
    if sentiment is not None:
        state.texts += 1
        state.sentiment_milli_sum += milli
        state.negative_reviews += is_negative(sentiment)
    # the latest review wins; at equal times, the larger (rating, sentiment): no order matters
    if (review.ts, review.rating, milli) > (state.last_review, state.last_rating, state.last_sentiment_milli):
        state.last_review = review.ts
        state.last_rating = review.rating
        state.last_sentiment_milli = milli


def _by_time(touch: ItemTouch) -> tuple[int, str]:
    return touch.ts, touch.item


def touch_item(state: UserState, item: str, kind: int, ts: int) -> None:
    """Record an interaction: one entry per item (its latest time, its heaviest kind), the
    latest RECENT_ITEMS items kept.

    >>> s = UserState("u")
    >>> touch_item(s, "a", 2, 10); touch_item(s, "b", 0, 5); touch_item(s, "a", 0, 20)
    >>> [(t.item, t.kind, t.ts) for t in s.items]
    [('b', 0, 5), ('a', 2, 20)]
    """
    for i, touch in enumerate(state.items):
        if touch.item == item:
            if ts <= touch.ts and kind <= touch.kind:
                return
            kind, ts = max(kind, touch.kind), max(ts, touch.ts)
            del state.items[i]
            break
    bisect.insort(state.items, ItemTouch(item, kind, ts), key=_by_time)  # the list is kept sorted: one insertion
    if len(state.items) > RECENT_ITEMS:
        del state.items[0]


def purchase_day_count(state: UserState) -> int:
    """Distinct UTC days with a purchase. States written before the count existed (0 with
    purchases) are estimated from the latest purchases' days (exact up to 16 purchases).

    >>> purchase_day_count(UserState("u", purchases=3, purchase_times=[0, 5, MS_PER_DAY]))
    2
    """
    if state.purchase_days or not state.purchases:
        return state.purchase_days
    return len({t // MS_PER_DAY for t in state.purchase_times})


def _count_purchase_day(state: UserState, ts: int) -> None:
    """Count the purchase's day unless one of the latest purchases (kept before this one)
    fell on it. Exact in any arrival order while the purchases of a day are among the
    latest 16 when a later one of that day arrives (a purchase arriving after 16 later
    ones, on a day of an older purchase, is counted again)."""
    state.purchase_days = purchase_day_count(state)  # (a state from before the count: estimated first)
    day = ts // MS_PER_DAY
    if all(t // MS_PER_DAY != day for t in state.purchase_times):
        state.purchase_days += 1


def _keep_latest(times: list[int], ts: int, bound: int) -> None:
    bisect.insort(times, ts)
    if len(times) > bound:
        del times[0]


def advance(state: UserState, now: int, cfg: StateConfig) -> None:
    """Move the state's clock to ``now``: finalize the abandoned carts the lateness can
    no longer change, and expire tiles."""
    since = state.clock
    if now <= since:
        return
    state.clock = now
    if state.carts:
        final = now - cfg.allowed_lateness_ms
        for cart in sorted(c for c in state.carts if c[1] + cfg.cart_timeout_ms < final):
            state.carts.remove(cart)
            if not _bought_within(state, cart[1], cfg.cart_timeout_ms):
                state.carts_abandoned += 1
                state.tiles.add(cart[1], {"carts_abandoned": 1}, now)
    state.tiles.expire(now, since)  # every add to the tiles is at a clock >= the state's


def _bought_within(state: UserState, start: int, span: int) -> bool:
    i = bisect.bisect_left(state.purchase_times, start)
    return i < len(state.purchase_times) and state.purchase_times[i] <= start + span


def mean_purchase_gap(state: UserState) -> float:
    """The first of :func:`purchase_gaps` alone (the lapse check's due time needs no more).

    >>> mean_purchase_gap(UserState("u", purchases=3, first_purchase=0, last_purchase=4 * MS_PER_DAY))
    2.0
    """
    if state.purchases < 2 or state.first_purchase is None or state.last_purchase is None:
        return 0.0
    return (state.last_purchase - state.first_purchase) / MS_PER_DAY / (state.purchases - 1)


def purchase_gaps(state: UserState) -> tuple[float, float]:
    """Mean gap between purchases over the lifetime (``(last - first) / (n - 1)``, so
    any arrival order gives it exactly) and the standard deviation of the gaps between
    the latest purchases, in days.

    >>> s = UserState("u", purchases=3, first_purchase=0, last_purchase=4 * MS_PER_DAY,
    ...               purchase_times=[0, MS_PER_DAY, 4 * MS_PER_DAY])
    >>> purchase_gaps(s)
    (2.0, 1.4142135623730951)
    """
    if state.purchases < 2 or state.first_purchase is None or state.last_purchase is None:
        return 0.0, 0.0
    mean = mean_purchase_gap(state)
    times = state.purchase_times
    gaps = [(b - a) / MS_PER_DAY for a, b in zip(times, times[1:])]
    if len(gaps) < 2:
        return mean, 0.0
    recent = sum(gaps) / len(gaps)
    return mean, math.sqrt(sum((g - recent) ** 2 for g in gaps) / (len(gaps) - 1))


#: Cap of :attr:`UserState.order_cents_sq` (within msgpack's 64-bit integers).
MAX_CENTS_SQ = 1 << 62


def last_gap_days(state: UserState) -> float:
    """Days between the latest two purchase days (among the latest purchases kept; 0 with
    fewer than two days).

    >>> last_gap_days(UserState("u", purchase_times=[0, 5, 3 * MS_PER_DAY, 10 * MS_PER_DAY]))
    7.0
    """
    days = sorted({t // MS_PER_DAY for t in state.purchase_times})
    return float(days[-1] - days[-2]) if len(days) >= 2 else 0.0


def abandoned_carts_open(state: UserState, now: int, cfg: StateConfig) -> list[int]:
    """Start times of carts not yet finalized whose timeout passed with no purchase."""
    return sorted(
        c[1] for c in state.carts if c[1] + cfg.cart_timeout_ms < now and not _bought_within(state, c[1], cfg.cart_timeout_ms)
    )
