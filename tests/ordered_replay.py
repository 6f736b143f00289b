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
from collections import defaultdict

from models.online import OnlineLearners
from streams.domain.actions import RetentionAction, encode_action
from streams.domain.engine import EngineConfig, Step, on_due, on_event
from streams.domain.events import Heartbeat, Invalid, decode
from streams.domain.features import as_dict
from streams.domain.schedule import DueQueue
from streams.domain.state import Applied, UserState
from streams.runtime.partitioning import make_partitioner
from streams.runtime.publish import encode_value
from streams.simulation import Shop, SimulationConfig


def ordered_replay(
    shop: Shop, partitions: int, cfg: EngineConfig, learners: OnlineLearners, max_clock_skew_ms: int = 86_400_000
) -> list[RetentionAction]:
    partition_for = make_partitioner(partitions)
    states: dict[str, UserState] = {}
    queues: dict[int, DueQueue] = defaultdict(DueQueue)
    clocks: dict[int, int] = defaultdict(int)
    actions: list[RetentionAction] = []

    def finish(state: UserState, step: Step, queue: DueQueue) -> None:
        for m in step.examples:  # as the worker learns them
            learners.observe(as_dict(m.features), m.churned, m.days, m.churn_p, m.loyalty_p)
        actions.extend(step.actions)
        queue.schedule(state.user_id, step.due_ms)

    def advance(partition: int, ts: int) -> None:
        clocks[partition] = now = max(clocks[partition], ts)
        queue = queues[partition]
        for user_id in queue.pop_due(now):
            state = states[user_id]
            finish(state, on_due(state, now, learners.churn, cfg, learners.loyalty), queue)

    rank = {"clicks": 0, "purchases": 1, "reviews": 2, "action-outcomes": 3, "heartbeats": 5}
    decoded = [decode(r.topic, encode_value(r.value), not_after_ms=r.ts_ms + max_clock_skew_ms) for r in shop.records()]
    events = [(e.ts, rank[topic], i, e) for i, (e, topic) in enumerate(zip(decoded, (r.topic for r in shop.records())))
              if not isinstance(e, Invalid)]
    events.sort(key=lambda t: t[:3])  # event time; at equal times data before heartbeats, as the worker merges
    for _, _, _, event in events:
        if isinstance(event, Heartbeat):
            for partition in range(partitions):
                advance(partition, event.ts)
            continue
        partition = partition_for(event.user_id)
        state = states.setdefault(event.user_id, UserState(event.user_id))
        clocks[partition] = max(clocks[partition], event.ts)  # the clock reaches the record first
        step = on_event(state, event, clocks[partition], cfg, None, learners.churn, learners.loyalty)
        if step.applied is not Applied.DUPLICATE:
            finish(state, step, queues[partition])
        advance(partition, event.ts)
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
    learners = OnlineLearners(horizon_days=settings.engine.churn_horizon_days, min_labels=settings.churn_min_labels,
                              churn_kind=settings.churn_learner, loyalty_kind=settings.loyalty_learner,
                              churn_prior_learns=settings.churn_prior_learns,
                              loyalty_prior_learns=settings.loyalty_prior_learns)
    for action in ordered_replay(shop, settings.partitions, settings.engine, learners, int(settings.max_clock_skew_s * 1000)):
        sys.stdout.write(json.dumps(json.loads(encode_action(action)), sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
