"""The "sorted stream" truth: the simulator's records, in event-time order, through the engine.

No broker and no Faust: each record goes straight to :func:`streams.domain.engine.on_event`
on the partition that owns its user, and each partition's clock follows the records of that
partition (heartbeats go to every partition, as the publisher sends them). This is what a
worker must decide however its inputs interleave; the demo and the integration tests
compare the worker's actions with it.

    .venv/bin/python -m tests.ordered_replay --customers 200 --days 90 > actions.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

from models.bundle import Models
from models.trainer import OfflineTraining
from streams.domain.actions import RetentionAction, encode_action
from streams.domain.engine import EngineConfig
from streams.domain.events import Heartbeat, Invalid, decode
from streams.domain.fold import Fold, offline_training
from streams.domain.policy_file import Policy
from streams.runtime.partitioning import make_partitioner
from streams.runtime.publish import encode_value
from streams.simulation import Shop, SimulationConfig
from streams.simulation.loop import PolicyRules


def ordered_replay(
    shop: Shop, partitions: int, cfg: EngineConfig, training: OfflineTraining[Models] | None = None,
    max_clock_skew_ms: int = 86_400_000, policy: Policy | None = None,
) -> list[RetentionAction]:
    """The actions of every partition; ``training`` (one trainer for all partitions, as on
    the workers) is left as the replay left it (its label counts and snapshots). With a
    ``policy``, its rules, bandits and guard rails decide, as one worker owning every
    partition runs them (one :class:`~streams.simulation.loop.PolicyRules` for all
    partitions, its bandits those of the snapshot at the decision's time; the budgets are
    the whole shop's, not split per partition: a test policy must not reach them)."""
    partition_for = make_partitioner(partitions)
    actions: list[RetentionAction] = []
    training = training if training is not None else offline_training()
    rules = PolicyRules(policy) if policy is not None else None
    if rules is not None:
        rules.models = training.models_at
    folds = [Fold(cfg, training, lambda state, step, now: actions.extend(step.actions), rules) for _ in range(partitions)]

    rank = {"clicks": 0, "purchases": 1, "reviews": 2, "action-outcomes": 3, "heartbeats": 5}
    decoded = [decode(r.topic, encode_value(r.value), not_after_ms=r.ts_ms + max_clock_skew_ms) for r in shop.records()]
    events = [(e.ts, rank[topic], i, e) for i, (e, topic) in enumerate(zip(decoded, (r.topic for r in shop.records())))
              if not isinstance(e, Invalid)]
    events.sort(key=lambda t: t[:3])  # event time; at equal times data before heartbeats, as the worker merges
    for _, _, _, event in events:
        if isinstance(event, Heartbeat):  # every partition's clock ticks
            for fold in folds:
                fold.feed(event)
        else:
            folds[partition_for(event.user_id)].feed(event)
    return actions


def main(argv: list[str] | None = None) -> int:
    from streams.runtime.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=600)
    parser.add_argument("--days", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    settings = Settings()
    shop = Shop(SimulationConfig(customers=args.customers, days=args.days, seed=args.seed, invalid_share=0.002, duplicate_share=0.01))
    training = offline_training(settings.fresh_models, settings.model_period_ms, settings.model_lag_periods)
    for action in ordered_replay(shop, settings.partitions, settings.engine, training, int(settings.max_clock_skew_s * 1000)):
        sys.stdout.write(json.dumps(json.loads(encode_action(action)), sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
