"""``retention evaluate --cdnow-classic``: the classic calibration/holdout split of the CDNOW
sample (Fader, Hardie and Lee 2005): weeks 1-39 calibrate, weeks 40-78 are the holdout, and
every customer is scored once, at the end of calibration, for "buys again in the holdout".

The online learners cannot learn that label: a 39-week horizon matures only after the
cut-off. So the calibration weeks are replayed through the engine exactly as
``retention evaluate`` replays a history, with the learning horizon ``H`` of the settings (or
``--horizon``): the learners learn the labels of the points whose ``H`` ends before the
cut-off. At the cut-off every partition's clock reaches it (a heartbeat), the trainer has
learned every period before it, and the snapshot that scores the cut-off answers for every
customer; its P(no purchase in H) *ranks* the customers for the holdout, and the ranking is
what ROC AUC measures (a probability for another horizon would need no other ranking).
The loyalty learners' expected purchase days in ``H`` rank the customers too (fewer: more
likely to lapse). BG/NBD is fitted once on the calibration weeks and ranks them two ways: by
P(no purchase in the holdout) (``bgnbd``) and by the expected purchase days in it
(``bgnbd-expected``, the better ranking: 0.7724 against 0.7565 on this split; issue 19's
BG/NBD figure, 0.7725, is this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.baselines import BgNbdBaseline
from models.bootstrap import Paired, auc, paired
from models.datasets import Transaction
from streams.domain.engine import EngineConfig
from streams.domain.evaluation import RECENCY, Replay
from streams.domain.events import Heartbeat
from streams.domain.features import as_dict, feature_vector
from streams.domain.state import advance
from streams.domain.timestamps import MS_PER_DAY

#: The classic split's calibration and holdout, in weeks.
CALIBRATION_WEEKS = 39
HOLDOUT_WEEKS = 39


@dataclass
class ClassicSplit:
    """Each model's AUC for "no purchase in the holdout" over the customers of the calibration."""

    cut_ms: int  #: the end of calibration (the holdout's first instant)
    end_ms: int  #: the end of the holdout (exclusive)
    customers: int
    churned: int  #: customers without a purchase in the holdout
    auc: dict[str, float | None]
    #: (learner, BG/NBD ranking) -> the learner's AUC minus BG/NBD's, customers resampled
    versus_bgnbd: dict[tuple[str, str], Paired]
    replay: Replay
    seconds: float


class _Ranking:
    """Scores and labels, for an exact ROC AUC of any real-valued score (not only a probability)."""

    def __init__(self) -> None:
        self.scores: list[float] = []
        self.labels: list[float] = []

    def update(self, score: float, label: int) -> None:
        self.scores.append(score)
        self.labels.append(float(label))

    def auc(self) -> float | None:
        if not 0 < sum(self.labels) < len(self.labels):
            return None
        return auc(self.scores, self.labels)


def holdout_buyers(rows: list[Transaction], cut_ms: int, end_ms: int) -> set[str]:
    """Customers with a purchase in ``[cut_ms, end_ms)``.

    >>> sorted(holdout_buyers([Transaction("a", 5, 1.0), Transaction("b", 10, 1.0), Transaction("c", 20, 1.0)], 10, 20))
    ['b']
    """
    return {t.customer_id for t in rows if cut_ms <= t.ts < end_ms}


def classic_split(
    rows: list[Transaction], cfg: EngineConfig, churn_kinds: list[str], loyalty_kinds: list[str], run: Any,
    calibration_weeks: int = CALIBRATION_WEEKS, holdout_weeks: int = HOLDOUT_WEEKS, resamples: int = 200, **replay_options: Any,
) -> ClassicSplit:
    """Replay the calibration weeks (``run``: :func:`streams.runtime.evaluate.run_replay`, given
    the decoded events and ``replay_options``), score every calibration customer at the cut-off
    and judge each model's ranking against the holdout."""
    from streams.runtime.evaluate import decoded, transaction_records

    start = min(t.ts for t in rows) // MS_PER_DAY * MS_PER_DAY
    cut = start + calibration_weeks * 7 * MS_PER_DAY
    end = cut + holdout_weeks * 7 * MS_PER_DAY
    calibration = [t for t in rows if t.ts < cut]
    events = decoded(transaction_records(calibration), heartbeats=False) + [Heartbeat(ts=cut, source="classic-split")]
    replay, seconds = run(events, cfg, churn_kinds, loyalty_kinds, **replay_options)
    replay.training.advance(cut)
    models = replay.training.models_at(cut)
    bgnbd = BgNbdBaseline(refit_days=1.0)  # fitted at its first answer, the cut-off
    for t in calibration:
        bgnbd.purchase(t.customer_id, t.ts)
    buyers = holdout_buyers(rows, cut, end)
    holdout = holdout_weeks * 7.0
    metrics: dict[str, _Ranking] = {}
    users: list[str] = []
    churned: list[float] = []
    ranked: dict[str, list[float]] = {}
    customers = lapsed = 0
    for user in sorted(replay.states):
        state = replay.states[user]
        if state.purchases == 0:
            continue
        advance(state, cut, cfg.state)
        features = feature_vector(state, cut, cfg.state)
        x = as_dict(features)
        label = int(user not in buyers)
        customers += 1
        lapsed += label
        # each model's score, higher for a customer less likely to buy again (AUC ranks only)
        scores = {churn.name: churn.score(x).value for churn in models.churn_models}
        scores |= {loyalty.name: -loyalty.score(x).value for loyalty in models.loyalty_models}
        scores["recency"] = models.recency.predict(features[RECENCY])[0]
        bg = bgnbd.predict(user, cut, holdout)
        if bg is not None:
            scores["bgnbd"], scores["bgnbd-expected"] = bg[0], -bg[1]
        for name, p in scores.items():
            metrics.setdefault(name, _Ranking()).update(p, label)
        if bg is not None:
            users.append(user)
            churned.append(float(label))
            for name, p in scores.items():
                ranked.setdefault(name, []).append(p)
    zeros = [0.0] * len(users)
    versus = {}
    if users and resamples > 0:
        for learner in (models.churn_models[0].name, models.loyalty_models[0].name):
            for baseline in ("bgnbd", "bgnbd-expected"):
                versus[(learner, baseline)] = paired(users, churned, zeros, ranked[learner], ranked[baseline], zeros, zeros, resamples=resamples)
    return ClassicSplit(
        cut_ms=cut, end_ms=end, customers=customers, churned=lapsed,
        auc={name: m.auc() for name, m in metrics.items()}, versus_bgnbd=versus, replay=replay, seconds=seconds,
    )


def report(result: ClassicSplit) -> list[str]:
    """The lines ``retention evaluate --cdnow-classic`` prints."""
    from streams.domain.timestamps import format_ts

    lines = [
        f"Classic split: calibration {format_ts(result.cut_ms - CALIBRATION_WEEKS * 7 * MS_PER_DAY)[:10]} to "
        f"{format_ts(result.cut_ms - MS_PER_DAY)[:10]}, holdout to {format_ts(result.end_ms - MS_PER_DAY)[:10]}; "
        f"{result.customers} customers scored at the cut-off, {result.customers - result.churned} bought again in the holdout",
        "ROC AUC for no purchase in the holdout (churn learners rank by P(no purchase in H), loyalty learners and "
        "bgnbd-expected by fewer expected purchase days, bgnbd by P(no purchase in the holdout)): "
        + ", ".join(f"{name} {auc:.4f}" if auc is not None else f"{name} -" for name, auc in result.auc.items()),
    ]
    for (learner, baseline), versus in result.versus_bgnbd.items():
        i = versus.auc
        lines.append(f"{learner} minus {baseline}: AUC {i.diff:+.4f} [{i.low:+.4f}, {i.high:+.4f}] (paired bootstrap of the customers, 95 %)")
    return lines
