"""The synthetic shop: deterministic, on-contract records whose patterns follow the known latent state."""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from streams.simulation import (
    CATEGORIES,
    MALFORMATIONS,
    PHRASES,
    CustomerTruth,
    LatentState,
    Shop,
    SimRecord,
    SimulationConfig,
    build_catalogue,
    malformed,
    polarity_for_rating,
)

DAY = 86_400_000
HOUR = 3_600_000
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
START_MS = 1_767_225_600_000
BASE = SimulationConfig(customers=400, new_customers_per_day=3.0, days=120.0, seed=11)

RFC3339_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
KINDS = {"page_view", "product_view", "search", "add_to_cart", "remove_from_cart", "wishlist", "checkout_start"}
ITEM_KINDS = {"product_view", "add_to_cart", "remove_from_cart", "wishlist"}
CHANNELS = {"web", "app", "store"}
CJK = re.compile(r"[\u4e00-\u9fff]")
LEGAL_MOVES = {
    (LatentState.NEW, LatentState.LOYAL),
    (LatentState.NEW, LatentState.DRIFTING),
    (LatentState.LOYAL, LatentState.DRIFTING),
    (LatentState.DRIFTING, LatentState.CHURNED),
    (LatentState.DRIFTING, LatentState.LOYAL),
    (LatentState.CHURNED, LatentState.LOYAL),
}


def _ms(ts: object) -> int:
    if isinstance(ts, int):
        return ts
    return int(datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp() * 1000 + 0.5)


def contract_problems(topic: str, value: object) -> list[str]:
    """An independent, strict reading of the topic contract (no simulation code involved)."""
    if not isinstance(value, dict):
        return ["not an object"]
    problems = []

    def need(name: str, ok: bool) -> None:
        if not ok:
            problems.append(f"{name}: {value.get(name)!r}")

    def ident(name: str, required: bool = True) -> None:
        if name in value or required:
            v = value.get(name)
            need(name, isinstance(v, str) and 1 <= len(v) <= 128)

    ts = value.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, str)):
        problems.append(f"ts: {ts!r}")
    elif isinstance(ts, int):
        need("ts", 946_684_800_000 <= ts <= 253_402_300_799_999)
    elif not RFC3339_MS_Z.match(ts):
        problems.append(f"ts: {ts!r}")
    else:
        try:
            datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            problems.append(f"ts: {ts!r}")
    if topic == "heartbeats":
        need("source", value.get("source") == "simulator")
        return problems
    ident("event_id")
    ident("user_id")
    if topic == "clicks":
        kind = value.get("kind")
        need("kind", kind in KINDS)
        ident("session_id", required=False)
        ident("item_id", required=kind in ITEM_KINDS)
        ident("category", required=kind in ITEM_KINDS)
        need("channel", value.get("channel", "web") in CHANNELS)
        need("query", (kind == "search") == isinstance(value.get("query"), str))
    elif topic == "purchases":
        ident("order_id")
        items = value.get("items")
        need("items", isinstance(items, list) and len(items) >= 1)
        cents = 0
        for line in items if isinstance(items, list) else []:
            q, p = line.get("quantity"), line.get("unit_price")
            if not (isinstance(line.get("item_id"), str) and line.get("category") in CATEGORIES):
                problems.append(f"item: {line!r}")
            if not (type(q) is int and q >= 1 and type(p) is float and p >= 0 and round(p, 2) == p):
                problems.append(f"line: {line!r}")
            else:
                cents += q * round(p * 100)
        total = value.get("total")
        need("total", type(total) is float and total == cents / 100)
        need("currency", value.get("currency") == "EUR")
        need("channel", value.get("channel") in CHANNELS)
        need("action_id", "action_id" not in value and "coupon_code" not in value)
    elif topic == "reviews":
        ident("item_id")
        ident("order_id", required=False)
        rating = value.get("rating")
        need("rating", type(rating) is int and 1 <= rating <= 5)
        need("text", isinstance(value.get("text", ""), str) and len(value.get("text", "")) <= 128)
    else:
        problems.append(f"unknown topic {topic}")
    return problems


def decode_raw(raw: bytes) -> object:
    """What a consumer gets from raw bytes, or None if they are not UTF-8 JSON at all."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


@pytest.fixture(scope="module")
def run() -> tuple[Shop, list[SimRecord]]:
    shop = Shop(BASE)
    return shop, list(shop.records())


@pytest.fixture(scope="module")
def noisy() -> tuple[Shop, list[SimRecord]]:
    shop = Shop(replace(BASE, customers=200, days=40.0, invalid_share=0.1, duplicate_share=0.05))
    return shop, list(shop.records())


@pytest.fixture(scope="module")
def purchase_times(run) -> dict[str, list[int]]:
    _, records = run
    times: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if r.topic == "purchases":
            times[r.key].append(r.ts_ms)
    return times


# --- determinism and order -------------------------------------------------------------------


def test_same_config_gives_identical_records_and_another_seed_does_not() -> None:
    small = SimulationConfig(customers=60, new_customers_per_day=2, days=15, seed=3, invalid_share=0.05,
                             duplicate_share=0.05)  # fmt: skip
    first, second = list(Shop(small).records()), list(Shop(small).records())
    assert first == second and len(first) > 1000
    other = list(Shop(replace(small, seed=4)).records())
    assert [r.value for r in other if r.topic != "heartbeats"] != [r.value for r in first if r.topic != "heartbeats"]


def test_a_later_start_simulates_the_same_customer_ids_with_event_ids_of_its_own() -> None:
    """``retention simulate --start``: the next period of a shop must not re-use the ids of the
    first (the workers would take a re-used id with other content for a conflict)."""
    def ids(config: SimulationConfig) -> tuple[set[str], set[str], set[str]]:
        values = [r.value for r in Shop(config).records() if r.topic in ("clicks", "purchases", "reviews")]
        return ({v["event_id"] for v in values}, {v["user_id"] for v in values},
                {v.get("session_id") or v.get("order_id") for v in values} - {None})

    base = SimulationConfig(customers=30, days=5, seed=3)
    events, users, others = ids(base)
    assert all(re.fullmatch(r"e-3-\d+", e) for e in events)  # the default start keeps its ids (and the demo its figures)
    later_events, later_users, later_others = ids(replace(base, start=datetime(2026, 1, 6, tzinfo=timezone.utc)))
    assert events.isdisjoint(later_events) and others.isdisjoint(later_others)
    assert all(e.startswith("e-3-20260106T000000-") for e in later_events)
    assert len(users & later_users) >= 20  # the same customers, in a later period
    naive = ids(replace(base, start=datetime(2026, 1, 6)))[0]  # naive datetimes are UTC
    assert naive == later_events


def test_records_come_in_event_time_order_within_the_window(run) -> None:
    _, records = run
    stamps = [r.ts_ms for r in records]
    assert stamps == sorted(stamps)
    assert stamps[0] >= START_MS and stamps[-1] < START_MS + 120 * DAY
    assert {r.topic for r in records} == {"clicks", "purchases", "reviews", "heartbeats"}


def test_records_are_generated_lazily() -> None:
    stream = Shop(SimulationConfig(customers=200, days=365_000)).records()
    # A thousand years would take hours to generate up front; the first day must not.
    first = next(stream)
    assert first.topic == "heartbeats" and first.ts_ms == START_MS


# --- the wire contract -----------------------------------------------------------------------


def test_every_record_meets_the_topic_contract(run) -> None:
    _, records = run
    as_int = Counter()
    for r in records:
        assert r.valid and isinstance(r.value, dict)
        assert contract_problems(r.topic, r.value) == [], (r.topic, r.value)
        assert _ms(r.value["ts"]) == r.ts_ms
        as_int[isinstance(r.value["ts"], int)] += 1
        if r.topic == "heartbeats":
            assert r.key is None
        else:
            assert r.key == r.value["user_id"] and re.fullmatch(r"u\d{6}", r.key)
    assert 0.07 < as_int[True] / len(records) < 0.13  # ~10 % integer epoch milliseconds


def test_records_validate_against_the_json_schemas(run) -> None:
    from tests import contract
    _, records = run
    by_topic = defaultdict(list)
    for r in records:
        by_topic[r.topic].append(r.value)
    for topic, values in by_topic.items():
        for value in values[:: max(1, len(values) // 100)]:
            assert contract.schema_errors(topic, value) == [], (topic, value)


def test_purchase_totals_are_the_sum_of_their_lines(run) -> None:
    _, records = run
    purchases = [r.value for r in records if r.topic == "purchases"]
    assert len(purchases) > 1000
    for p in purchases:
        assert p["total"] == round(sum(line["quantity"] * line["unit_price"] for line in p["items"]), 2)
    catalogue = {item.item_id: item for item in build_catalogue().items}
    lines = [line for p in purchases for line in p["items"]]
    assert all(catalogue[line["item_id"]].category == line["category"] for line in lines)
    assert Counter(line["quantity"] for line in lines)[1] > 0.6 * len(lines)
    assert {p["channel"] for p in purchases} == CHANNELS


def test_ids_are_unique_and_well_formed(run) -> None:
    _, records = run
    data = [r.value for r in records if r.topic != "heartbeats"]
    event_ids = [v["event_id"] for v in data]
    assert len(set(event_ids)) == len(event_ids)
    assert all(re.fullmatch(r"e-11-\d+", e) for e in event_ids)
    orders = [v["order_id"] for v in data if "items" in v]
    assert len(set(orders)) == len(orders) and all(o.startswith("o") for o in orders)
    assert all(v["session_id"].startswith("s") for v in data if "session_id" in v)


def test_heartbeats_tick_every_hour_of_event_time(run) -> None:
    _, records = run
    beats = [r for r in records if r.topic == "heartbeats"]
    assert [b.ts_ms for b in beats] == [START_MS + i * HOUR for i in range(120 * 24)]
    assert all(b.value["source"] == "simulator" for b in beats)
    custom = Shop(SimulationConfig(customers=5, days=1, heartbeat_every=timedelta(minutes=15)))
    assert sum(r.topic == "heartbeats" for r in custom.records()) == 96


def test_clicks_come_in_sessions_and_web_purchases_follow_a_checkout(run) -> None:
    _, records = run
    clicks = [r.value for r in records if r.topic == "clicks"]
    assert {c["kind"] for c in clicks} == KINDS
    sessions: dict[str, list[dict]] = defaultdict(list)
    for c in clicks:
        sessions[c["session_id"]].append(c)
    assert len(clicks) / len(sessions) > 3
    assert all(len({c["user_id"] for c in s}) == 1 for s in sessions.values())
    abandoned = sum(
        1 for s in sessions.values() if any(c["kind"] == "add_to_cart" for c in s) and s[-1]["kind"] != "checkout_start"
    )
    assert abandoned > 100
    last_click: dict[str, dict] = {}
    checked = 0
    for r in records:
        if r.topic == "clicks":
            last_click[r.key] = r.value
        elif r.topic == "purchases" and r.value["channel"] != "store":
            before = last_click[r.key]
            assert before["kind"] == "checkout_start" and r.ts_ms - _ms(before["ts"]) < 5 * 60_000
            checked += 1
    assert checked > 1000


def test_customers_have_category_affinity(run, purchase_times) -> None:
    _, records = run
    bought: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        if r.topic == "purchases":
            for line in r.value["items"]:
                bought[r.key][line["category"]] += 1
    shares = [c.most_common(1)[0][1] / sum(c.values()) for c in bought.values() if sum(c.values()) >= 6]
    assert len(shares) > 100
    assert statistics.mean(shares) > 0.35  # uniform choice over 12 categories would give ~0.2


# --- corruption and re-sends -----------------------------------------------------------------


def test_invalid_share_replaces_records_with_malformed_bytes(noisy) -> None:
    shop, records = noisy
    data = [r for r in records if r.topic != "heartbeats"]
    invalid = [r for r in data if not r.valid]
    assert 0.08 < len(invalid) / len(data) < 0.12
    assert shop.counts["invalid"] == len(invalid)
    assert all(isinstance(r.value, bytes) for r in invalid)
    assert any(r.key is None for r in invalid)
    seen = Counter()
    for r in invalid:
        decoded = decode_raw(r.value)
        assert contract_problems(r.topic, decoded), (r.topic, r.value)
        seen["not json or not utf-8" if decoded is None else "breaks a rule"] += 1
    assert seen["not json or not utf-8"] > 50 and seen["breaks a rule"] > 50
    from tests import contract
    for r in invalid:
        decoded = decode_raw(r.value)
        if decoded is not None:
            assert contract.schema_errors(r.topic, decoded), r.value
    assert set(MALFORMATIONS) == {"clicks", "purchases", "reviews"}
    for r in records:
        if r.valid:
            assert isinstance(r.value, dict) and contract_problems(r.topic, r.value) == []


@pytest.mark.parametrize("topic", sorted(MALFORMATIONS))
def test_every_malformation_breaks_the_contract(run, topic: str) -> None:
    _, records = run
    good = next(r.value for r in records if r.topic == topic)
    rng = random.Random(5)
    seen = Counter()
    for _ in range(300):
        raw, key = malformed(topic, good, rng)
        assert isinstance(raw, bytes) and key in (good["user_id"], None)
        decoded = decode_raw(raw)
        assert contract_problems(topic, decoded), raw
        if decoded is None:
            seen["undecodable"] += 1
        elif isinstance(decoded, dict):
            seen["no user_id"] += "user_id" not in decoded
            seen["rating 7"] += decoded.get("rating") == 7
            seen["bad ts"] += contract_problems(topic, {**good, "ts": decoded.get("ts")}) != []
            seen["negative quantity"] += any(line.get("quantity", 1) < 0 for line in decoded.get("items", []))
            seen["bad enum"] += decoded.get("kind") not in KINDS if topic == "clicks" else (
                topic == "purchases" and decoded.get("channel") not in CHANNELS
            )
    assert seen["undecodable"] > 50 and seen["no user_id"] > 10 and seen["bad ts"] > 10
    if topic == "reviews":
        assert seen["rating 7"] > 10
    else:
        assert seen["bad enum"] > 10
    if topic == "purchases":
        assert seen["negative quantity"] > 10
    assert good == next(r.value for r in records if r.topic == topic)  # the good record is left alone


def test_duplicate_share_resends_identical_records_shortly_after(noisy) -> None:
    shop, records = noisy
    first: dict[str, SimRecord] = {}
    resent = 0
    for r in records:
        if not r.valid or r.topic == "heartbeats":
            continue
        eid = r.value["event_id"]
        if eid in first:
            original = first[eid]
            assert r.value == original.value and r.topic == original.topic and r.key == original.key
            assert 0 < r.ts_ms - original.ts_ms <= 120_000
            resent += 1
        else:
            first[eid] = r
    assert resent == shop.counts["duplicates"]
    assert 0.035 < resent / len(first) < 0.065


def test_no_corruption_or_duplicates_by_default(run) -> None:
    shop, records = run
    assert shop.counts["invalid"] == shop.counts["duplicates"] == 0
    assert {t: shop.counts[t] for t in ("clicks", "purchases", "reviews", "heartbeats")} == Counter(
        r.topic for r in records
    )


# --- ground truth and dynamics ---------------------------------------------------------------


def test_truth_is_consistent_with_the_records(run, purchase_times) -> None:
    shop, records = run
    truth = shop.truth()
    assert all(isinstance(t, CustomerTruth) for t in truth.values())
    assert 400 < len(truth) < 400 + 3 * 120 * 1.5
    spend: dict[str, float] = defaultdict(float)
    for r in records:
        if r.topic == "purchases":
            spend[r.key] += r.value["total"]
    for user, t in truth.items():
        assert t.transitions[0] == (t.joined_ms, LatentState.NEW)
        assert [ts for ts, _ in t.transitions] == sorted(ts for ts, _ in t.transitions)
        assert all((a, b) in LEGAL_MOVES for (_, a), (_, b) in zip(t.transitions, t.transitions[1:]))
        assert t.purchases == len(purchase_times.get(user, []))
        assert t.spend == pytest.approx(spend.get(user, 0.0), abs=0.01)
    existing = [t for t in truth.values() if t.joined_ms < START_MS]
    arrivals = [t for t in truth.values() if t.joined_ms >= START_MS]
    assert len(existing) == 400 and len(arrivals) > 200
    states_at_start = Counter(shop.state_at(t.user_id, START_MS) for t in existing)
    assert all(states_at_start[s] > 20 for s in LatentState)


def test_truth_can_be_computed_without_consuming_records(run) -> None:
    shop, _ = run
    fresh = Shop(BASE)
    assert fresh.truth() == shop.truth()
    user = next(iter(fresh.truth()))
    with pytest.raises(KeyError):
        fresh.state_at("nobody", START_MS)
    with pytest.raises(ValueError, match="joined"):
        fresh.state_at(user, fresh.truth()[user].joined_ms - 1)


def _time_in_states(truth: dict[str, CustomerTruth], end_ms: int) -> Counter:
    days = Counter()
    for t in truth.values():
        bounds = [*t.transitions, (end_ms, None)]
        for (a, state), (b, _) in zip(bounds, bounds[1:]):
            a = max(a, START_MS)
            if b > a:
                days[state] += (b - a) / DAY
    return days


def test_activity_follows_the_latent_state(run) -> None:
    shop, records = run
    days = _time_in_states(shop.truth(), START_MS + 120 * DAY)
    purchases, clicks = Counter(), Counter()
    for r in records:
        if r.topic in ("purchases", "clicks"):
            (purchases if r.topic == "purchases" else clicks)[shop.state_at(r.key, r.ts_ms)] += 1
    buy_rate = {s: purchases[s] / days[s] for s in LatentState}
    click_rate = {s: clicks[s] / days[s] for s in LatentState}
    assert 1 / 20 < buy_rate[LatentState.LOYAL] < 1 / 5  # personal gaps of 5 to 20 days
    assert buy_rate[LatentState.LOYAL] > 2.5 * buy_rate[LatentState.DRIFTING]
    assert purchases[LatentState.CHURNED] == 0
    assert click_rate[LatentState.LOYAL] > 1.5 * click_rate[LatentState.DRIFTING] > 10 * click_rate[LatentState.CHURNED]
    assert 0 < clicks[LatentState.CHURNED]  # churned customers still look in, rarely


def test_many_customers_buy_regularly_then_churn(run, purchase_times) -> None:
    shop, _ = run
    streaks = []
    for user, t in shop.truth().items():
        churn = [ts for ts, s in t.transitions if s is LatentState.CHURNED and ts >= START_MS]
        if not churn:
            continue
        after = [ts for ts, _ in t.transitions if ts > churn[0]]
        bought = purchase_times.get(user, [])
        assert not [p for p in bought if churn[0] <= p < (after[0] if after else float("inf"))]
        before = [p for p in bought if p < churn[0]]
        if len(before) >= 3:
            gaps = [b - a for a, b in zip(before, before[1:])]
            streaks.append(statistics.pstdev(gaps) / statistics.mean(gaps))
    assert len(streaks) >= 60
    assert statistics.median(streaks) < 0.5  # regular gaps, not random bursts


def test_loyal_customers_keep_buying(run, purchase_times) -> None:
    shop, _ = run
    last_60 = START_MS + 60 * DAY
    steady = [
        user
        for user, t in shop.truth().items()
        if all(s is LatentState.LOYAL for ts, s in t.transitions if ts >= last_60)
        and shop.state_at(user, last_60) is LatentState.LOYAL
        and sum(p >= last_60 for p in purchase_times.get(user, [])) >= 3
    ]
    assert len(steady) >= 80


def test_reviews_rate_lower_when_drifting_and_bad_ones_can_start_drifting(run) -> None:
    shop, records = run
    order_ts = {r.value["order_id"]: r.ts_ms for r in records if r.topic == "purchases"}
    ratings: dict[LatentState, list[int]] = defaultdict(list)
    pushed = 0
    for r in records:
        if r.topic != "reviews":
            continue
        if "order_id" in r.value:
            ratings[shop.state_at(r.key, order_ts[r.value["order_id"]])].append(r.value["rating"])
        if r.value["rating"] <= 2:
            moves = shop.truth()[r.key].transitions
            pushed += any(ts == r.ts_ms and s is LatentState.DRIFTING for ts, s in moves)
    assert statistics.mean(ratings[LatentState.LOYAL]) > statistics.mean(ratings[LatentState.DRIFTING]) + 0.8
    assert pushed >= 10


def _template_pattern(template: str) -> re.Pattern:
    parts = [re.escape(p) for p in template.split("{cat}")]
    return re.compile("^" + r"[^.!?。！，]+".join(parts))


def test_review_texts_are_english_and_chinese_and_match_the_rating(run) -> None:
    _, records = run
    reviews = [r.value for r in records if r.topic == "reviews"]
    assert len(reviews) > 300
    with_text = [v for v in reviews if "text" in v]
    assert 0.8 < len(with_text) / len(reviews) < 1.0
    chinese = [v for v in with_text if CJK.search(v["text"])]
    assert 0.2 < len(chinese) / len(with_text) < 0.4
    patterns = {
        (lang, polarity): [_template_pattern(t) for t in templates]
        for lang, by_polarity in PHRASES.items()
        for polarity, templates in by_polarity.items()
    }
    for v in with_text:
        matched = {key for key, pats in patterns.items() if any(p.match(v["text"]) for p in pats)}
        lang = "zh" if CJK.search(v["text"]) else "en"
        assert matched == {(lang, polarity_for_rating(v["rating"]))}, v
    assert len({v["text"] for v in with_text}) > 100


def test_phrase_lists_are_varied() -> None:
    for lang, by_polarity in PHRASES.items():
        assert set(by_polarity) == {"positive", "mixed", "negative"}
        for polarity, phrases in by_polarity.items():
            assert len(set(phrases)) >= 15, (lang, polarity)


# --- small pieces ----------------------------------------------------------------------------


def test_catalogue_is_fixed_with_priced_items_in_every_category() -> None:
    catalogue = build_catalogue()
    assert catalogue.items == build_catalogue().items and len(catalogue.items) == 500
    assert {i.category for i in catalogue.items} == set(CATEGORIES) and len(CATEGORIES) == 12
    assert all(i.price > 0 and round(i.price, 2) == i.price for i in catalogue.items)
    assert len({i.item_id for i in catalogue.items}) == 500


@pytest.mark.parametrize(
    "bad",
    [{"days": 0}, {"customers": -1}, {"invalid_share": 1.5}, {"duplicate_share": -0.1},
     {"heartbeat_every": timedelta(0)}, {"reactivation_mean_days": 0}],  # fmt: skip
)
def test_config_rejects_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        SimulationConfig(**bad)


def test_start_and_fractional_days_are_honoured() -> None:
    start = datetime(2026, 3, 1, 12, 30, tzinfo=timezone.utc)
    records = list(Shop(SimulationConfig(customers=30, days=2.5, start=start, seed=1)).records())
    start_ms = int(start.timestamp() * 1000)
    assert records[0].ts_ms == start_ms and records[-1].ts_ms < start_ms + int(2.5 * DAY)
    assert sum(r.topic == "heartbeats" for r in records) == 60


def test_wire_noise_does_not_change_what_customers_do() -> None:
    clean = SimulationConfig(customers=80, new_customers_per_day=2, days=20, seed=9)
    noisy = replace(clean, invalid_share=0.2, duplicate_share=0.1)
    transitions = {u: t.transitions for u, t in Shop(clean).truth().items()}
    assert {u: t.transitions for u, t in Shop(noisy).truth().items()} == transitions
