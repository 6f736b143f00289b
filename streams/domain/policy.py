"""The first retention rule: a customer who stops buying after a buying streak gets a coupon.

A *streak* is at least ``streak_min_purchases`` purchases. The customer has *lapsed*
when the event-time clock is past the last purchase by ``lapse_gap_factor`` times their
usual gap between purchases (and at least ``lapse_min_days``). From then on the
customer is checked every ``recheck_days`` until the churn score reaches
``churn_threshold`` (one coupon per lapse episode) or ``give_up_days`` have passed.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.score import Score
from streams.domain.actions import ControlBy, Reason, RetentionAction, action_id, coupon_code, experiment_group
from streams.domain.features import as_dict
from streams.domain.state import UserState, mean_purchase_gap
from streams.domain.timestamps import MS_PER_DAY, format_ts

LAPSED_AFTER_STREAK = "lapsed_after_streak"


@dataclass(frozen=True)
class PolicyConfig:
    streak_min_purchases: int = 3
    lapse_min_days: float = 14.0
    lapse_gap_factor: float = 2.0
    recheck_days: float = 1.0
    give_up_days: float = 120.0
    churn_threshold: float = 0.5
    coupon_percent: float = 10.0
    coupon_ttl_days: float = 14.0
    control_share: float = 0.1
    #: The control group drawn per customer (all kinds alike) or per customer and kind.
    control_by: ControlBy = "customer"


def lapse_check_due(state: UserState, cfg: PolicyConfig) -> int | None:
    """Event time of the next lapse check, or None if the user is not (or no longer) a case."""
    last = state.last_purchase
    if state.unsubscribed or last is None or state.purchases < cfg.streak_min_purchases:
        return None
    if state.lapse_acted == last:
        return None
    wait_days = max(cfg.lapse_min_days, cfg.lapse_gap_factor * mean_purchase_gap(state))
    due = last + int(wait_days * MS_PER_DAY)
    if state.lapse_checked is not None and state.lapse_checked >= due:
        due = state.lapse_checked + int(cfg.recheck_days * MS_PER_DAY)
    if due > last + int(cfg.give_up_days * MS_PER_DAY):
        return None
    return due


def decide_lapse(
    state: UserState, now_ms: int, features: list[float], churn: Score, cfg: PolicyConfig
) -> RetentionAction | None:
    """Run the lapse rule at ``now_ms``: a coupon action, or None. Updates the episode marks."""
    due = lapse_check_due(state, cfg)
    if due is None or now_ms < due:
        return None
    state.lapse_checked = now_ms
    if churn.value < cfg.churn_threshold:
        return None
    episode = state.last_purchase
    assert episode is not None  # lapse_check_due guarantees it
    state.lapse_acted = episode
    aid = action_id(state.user_id, LAPSED_AFTER_STREAK, episode)
    return RetentionAction(
        action_id=aid,
        user_id=state.user_id,
        ts=format_ts(now_ms),
        kind="coupon",
        payload={"code": coupon_code(aid), "percent_off": cfg.coupon_percent},
        reason=Reason(
            rule=LAPSED_AFTER_STREAK,
            scores={"churn": round(churn.value, 4)},
            model_versions={"churn": churn.version},
            features=as_dict(features),
        ),
        group=experiment_group(state.user_id, cfg.control_share, kind="coupon", by=cfg.control_by),
        expires_at=format_ts(now_ms + int(cfg.coupon_ttl_days * MS_PER_DAY)),
    )
