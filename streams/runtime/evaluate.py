"""``retention evaluate``: a history replayed through the engine; the models side by side.

Sources: a transactions CSV, the CDNOW history (``models/datasets.py``), or the simulator
(whose clicks and reviews are replayed too). The replay itself is pure
(:mod:`streams.domain.evaluation`); this module builds the events and prints the tables.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from models.churn import ChurnModel, LoyaltyModel
from models.datasets import Transaction
from streams.domain.engine import EngineConfig
from streams.domain.evaluation import BGNBD_EXPECTED, Replay
from streams.domain.events import Channel, Heartbeat, Invalid, Item, Purchase, UserEvent, decode
from streams.domain.timestamps import MS_PER_DAY, format_ts
from streams.runtime import heap
from streams.runtime.partitioning import make_partitioner
from streams.runtime.publish import Outgoing, encode_value

RANK = {"clicks": 0, "purchases": 1, "reviews": 2, "action-outcomes": 3, "heartbeats": 5}


def purchases_of(transactions: Iterable[Transaction]) -> Iterator[Purchase]:
    """Transactions as purchase events (a transaction is one order of one line)."""
    for i, t in enumerate(transactions):
        yield Purchase(
            event_id=f"t{i}", user_id=t.customer_id, ts=t.ts, order_id=f"t{i}",
            items=[Item(item_id="-", quantity=1, unit_price=t.amount)], total=t.amount, currency="USD", channel=Channel.WEB,
        )


def transaction_records(transactions: Iterable[Transaction]) -> list[Outgoing]:
    """Transactions as records of the ``purchases`` topic, as a producer would publish them
    (the contract's fields; optional ones left out)."""
    return [Outgoing("purchases", p.user_id, encode_value({**_without_none(msgspec.to_builtins(p)), "ts": format_ts(p.ts)}), p.ts)
            for p in purchases_of(transactions)]  # RFC 3339: the contract reads integers before 2000 as a mistake


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def daily_heartbeats(records: list[Outgoing]) -> list[Outgoing]:
    """A heartbeat at every UTC midnight after the first record up to the one after the
    last: every partition's clock reaches each day, as a shop's heartbeat producer would
    move it (a purchase history has no heartbeats of its own)."""
    if not records:
        return []
    first, last = min(r.ts_ms for r in records), max(r.ts_ms for r in records)
    days = range(first // MS_PER_DAY + 1, last // MS_PER_DAY + 2)
    return [Outgoing("heartbeats", None, encode_value({"ts": d * MS_PER_DAY, "source": "evaluate"}), d * MS_PER_DAY) for d in days]


def simulated_records(customers: int, days: float, seed: int) -> list[Outgoing]:
    """The simulator's records (clicks, purchases, reviews, heartbeats) as they go on the wire."""
    from streams.runtime.publish import simulation_records
    from streams.simulation import Shop, SimulationConfig

    return list(simulation_records(Shop(SimulationConfig(customers=customers, days=days, seed=seed))))


def decoded(records: Iterable[Outgoing], heartbeats: bool) -> list[UserEvent | Heartbeat]:
    """The valid records decoded as the worker decodes them, in the worker's merge order
    (event time; at equal times data before heartbeats); heartbeats only if asked for."""
    keyed = []
    for i, record in enumerate(records):
        event = decode(record.topic, record.value, not_after_ms=None)
        if not isinstance(event, Invalid) and (heartbeats or not isinstance(event, Heartbeat)):
            keyed.append((event.ts, RANK[record.topic], i, event))
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


def run_replay(
    events: Iterable[UserEvent], cfg: EngineConfig, churn_kinds: list[str], loyalty_kinds: list[str],
    period_days: float, min_labels: int, bgnbd_refit_days: float, learn_churn_early: bool = False,
    churn_prior_learns: bool = False, loyalty_prior_learns: bool = False,
    model_period_days: float = 1.0, model_lag_periods: int = 1, partitions: int = 1,
    bgnbd_refit_periods: int = 7, bgnbd_customers: int = 1_000_000, scores_interval_ms: int = 86_400_000,
) -> tuple[Replay, float]:
    """The in-process replay; with ``partitions`` > 1 users are split as the workers split
    them (murmur2 of the user id), each partition with its own event-time clock."""
    churn = [ChurnModel(min_labels=min_labels, kind=k, learned_prior=churn_prior_learns, horizon_days=cfg.churn_horizon_days)
             for k in churn_kinds]
    loyalty = [LoyaltyModel(horizon_days=cfg.churn_horizon_days, min_labels=min_labels, kind=k, learned_prior=loyalty_prior_learns)
               for k in loyalty_kinds]
    replay = Replay(cfg, churn, loyalty, period_days=period_days, bgnbd_refit_days=bgnbd_refit_days, learn_churn_early=learn_churn_early,
                    model_period_days=model_period_days, model_lag_periods=model_lag_periods,
                    partition_for=make_partitioner(partitions) if partitions > 1 else None,
                    bgnbd_refit_periods=bgnbd_refit_periods, bgnbd_customers=bgnbd_customers, scores_interval_ms=scores_interval_ms)
    started = time.perf_counter()
    with heap.settled():  # (the events and the set-up frozen, collections spaced out, as in a worker)
        replay.run(events)
    return replay, time.perf_counter() - started


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _day(ms: int | None) -> str:
    return "all" if ms is None else format_ts(ms)[:10]


def _period_table(
    rows: list[dict[str, Any]], part: str, title: str, label: tuple[str, str], learners: list[str],
    pair: tuple[str, str, str],
) -> Table:
    """One row per period of scoring time: its points and label summary (``label``: column,
    key, from the recency baseline, which scores every point) and, per model, two metrics."""
    heading, first, second = pair
    models = learners + ["recency", "bgnbd"] + ([BGNBD_EXPECTED] if part == "churn" else [])
    table = Table(title=f"{title}, by period of the scoring time")
    table.add_column("period from")
    table.add_column("points", justify="right")
    table.add_column(label[0], justify="right")
    for m in models:
        table.add_column(f"{m}\n{heading}", justify="right")
    for row in rows:
        scores = row[part]
        base = scores.get("recency") or {}
        table.add_row(
            _day(row["period_start_ms"]), str(base.get("count", 0)), _f(base.get(label[1])),
            *(f"{_f(scores[m][first])} | {_f(scores[m][second])}" if m in scores else "-" for m in models),
        )
    return table


def tables(replay: Replay) -> list[Table]:
    """Churn (AUC, log loss) and loyalty (MAE, RMSE) per period, every model side by side,
    and one row per model over all periods (with the Brier score and calibration error)."""
    rows = replay.table()
    h = replay.cfg.churn_horizon_days
    churn = _period_table(
        rows, "churn", f"Churn (no purchase in {h:g} days): ROC AUC | log loss", ("churned", "churn_rate"),
        [m.name for m in replay.churn_models], ("AUC | logloss", "auc", "log_loss"),
    )
    loyalty = _period_table(
        rows, "loyalty", f"Loyalty (purchase days in {h:g} days): MAE | RMSE", ("mean days", "mean_label"),
        [m.name for m in replay.loyalty_models], ("MAE | RMSE", "mae", "rmse"),
    )
    overall = Table(title="All periods: churn AUC, log loss, Brier, ECE; loyalty MAE, RMSE (points scored by each model)")
    for col in ("model", "points", "AUC", "log loss", "Brier", "ECE", "MAE", "RMSE"):
        overall.add_column(col, justify="left" if col == "model" else "right")
    total = rows[-1]
    for m in [n.name for n in replay.churn_models]:
        r = total["churn"].get(m, {})
        overall.add_row(m, str(r.get("count", 0)), _f(r.get("auc")), _f(r.get("log_loss")), _f(r.get("brier")), _f(r.get("ece")), "", "")
    for m in [n.name for n in replay.loyalty_models]:
        r = total["loyalty"].get(m, {})
        overall.add_row(m, str(r.get("count", 0)), "", "", "", "", _f(r.get("mae")), _f(r.get("rmse")))
    for m in ("recency", "bgnbd"):
        c, v = total["churn"].get(m, {}), total["loyalty"].get(m, {})
        overall.add_row(
            m, str(c.get("count", 0)), _f(c.get("auc")), _f(c.get("log_loss")), _f(c.get("brier")), _f(c.get("ece")),
            _f(v.get("mae")), _f(v.get("rmse")),
        )
    c = total["churn"].get(BGNBD_EXPECTED, {})
    overall.add_row(BGNBD_EXPECTED, str(c.get("count", 0)), _f(c.get("auc")), _f(c.get("log_loss")), _f(c.get("brier")), _f(c.get("ece")), "", "")
    return [churn, loyalty, overall]


def _interval(i: Any) -> str:
    return f"{i.diff:+.4f} [{i.low:+.4f}, {i.high:+.4f}]"


def paired_table(replay: Replay, resamples: int) -> Table | None:
    """Per period, the first learners against BG/NBD on the points both scored: the
    difference of churn AUC and of loyalty RMSE with its paired 95 % bootstrap interval
    (customers resampled), and each one's predicted / actual total of purchase days."""
    churn, loyalty = replay.churn_models[0].name, replay.loyalty_models[0].name
    rows = replay.paired(churn, loyalty, resamples=resamples)
    if not rows:
        return None
    # the same resamples (the bootstrap's seed) against BG/NBD ranked by its expected purchases
    expected = {row["period_start_ms"]: row["result"].auc for row in replay.paired(churn, loyalty, BGNBD_EXPECTED, resamples)}
    table = Table(title=f"{churn} and {loyalty} against BG/NBD, paired bootstrap ({resamples} resamples of the customers, 95 %)")
    for col in ("period from", "points", "customers", "AUC difference [interval]", f"vs {BGNBD_EXPECTED}", "RMSE difference [interval]",
                "predicted / actual days", "BG/NBD's"):
        table.add_column(col, justify="left" if col == "period from" else "right")
    for row in rows:
        r = row["result"]
        mine, theirs = row["total_ratio"]
        versus = expected.get(row["period_start_ms"])
        table.add_row(_day(row["period_start_ms"]), str(r.points), str(r.customers), _interval(r.auc),
                      _interval(versus) if versus is not None else "-", _interval(r.rmse), _f(mine), _f(theirs))
    return table


def blend_summary(replay: Replay, after_ms: int) -> str:
    """The first learners' weights over the snapshots from ``after_ms`` on: range, mean
    and largest change from one snapshot to the next, and the days the prior answered alone."""
    from datetime import date

    epoch = date(1970, 1, 1)
    path = [p for p in replay.path if (date.fromisoformat(p["version"][:10]) - epoch).days * MS_PER_DAY >= after_ms]
    if len(path) < 2:
        return "blend: fewer than two snapshots after the first horizon"
    parts = []
    for part in ("churn", "loyalty"):
        w = [p[f"{part}_weight"] for p in path]
        steps = [abs(b - a) for a, b in zip(w, w[1:])]
        parts.append(
            f"{part} weight {min(w):.2f}-{max(w):.2f} (median {sorted(w)[len(w) // 2]:.2f}, last {w[-1]:.2f}), change per snapshot "
            f"mean {sum(steps) / len(steps):.3f} max {max(steps):.3f}, prior alone on {sum(1 for v in w if v <= 0)} of {len(w)}"
        )
    scale = [p["loyalty_scale"] for p in path]
    return f"blend after {format_ts(after_ms)[:10]}: " + "; ".join(parts) + f"; loyalty scale {min(scale):.3f}-{max(scale):.3f}"


def write_blend_path(replay: Replay, path: str) -> None:
    """The first learners' blend at every snapshot, as CSV (docs/evaluation.md plots it)."""
    import csv

    with open(path, "w", newline="") as handle:
        fields = ["version", "labels", "churn_weight", "churn_target", "loyalty_weight", "loyalty_target", "loyalty_scale"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in replay.path:
            writer.writerow({k: row.get(k) for k in fields})


def print_report(replay: Replay, seconds: float, source: str, console: Console | None = None, resamples: int = 200) -> None:
    console = console or Console(width=200)
    for table in tables(replay):
        console.print(table)
    if resamples > 0 and (paired_rows := paired_table(replay, resamples)) is not None:
        console.print(paired_rows)
    if replay.start is not None:
        console.print(blend_summary(replay, replay.start + int(replay.cfg.churn_horizon_days * MS_PER_DAY)))
    bg = replay.bgnbd
    console.print(
        f"{source}: {replay.events} events, {len(replay.states)} customers, {format_ts(replay.start or 0)[:10]} to "
        f"{format_ts(replay.end or 0)[:10]}; {replay.points} scoring points stored, "
        f"{replay.total.churn['recency'].count if 'recency' in replay.total.churn else 0} matured within the history; "
        f"BG/NBD refitted {bg.fits} times; replay {seconds:.1f} s ({replay.events / seconds if seconds else 0:.0f} events/s)"
    )
    console.print("BG/NBD has no prediction before its first fit (20 buyers): its columns count only points after it.")
