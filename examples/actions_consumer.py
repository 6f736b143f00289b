#!/usr/bin/env python3
"""An example marketing consumer of ``retention-actions`` (confluent-kafka only).

The contract (docs/consuming.md):

- delivery is **at least once**: the same action can arrive twice (a worker restart, a
  rebalance); it has the same ``action_id`` (deterministic from the decision), so
  deduplicate on it;
- ``group == "control"`` actions are recorded for measurement and must not be delivered;
- an action past ``expires_at`` must not be delivered;
- what happened goes back on ``action-outcomes`` (``delivered``, ``opened``, ``clicked``,
  ``redeemed``, ``unsubscribed``); after ``unsubscribed`` no further action is decided.

Offsets are committed only after an action is handled, so a crash re-reads (never loses)
actions; the dedupe memory here is in-process and bounded; a real mailer keeps it where
it sends from (a unique key on action_id in its database), so it survives its restarts.

    KAFKA_BOOTSTRAP_SERVERS=localhost:9092 python examples/actions_consumer.py --group marketing-mailer

Prints one line per delivered action (kind, user, what to send) and reports each as
``delivered`` on ``action-outcomes`` with ``--report``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any


class Deliverable:
    """Which actions to deliver: treatment, not expired, not seen (the last ``memory`` ids).

    >>> d = Deliverable(memory=2)
    >>> a = {"action_id": "a1", "group": "treatment", "expires_at": "2026-01-15T00:00:00Z"}
    >>> now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> d(a, now), d(a, now)  # redelivered: once
    ('deliver', 'duplicate')
    >>> d({**a, "action_id": "a2", "group": "control"}, now)
    'control'
    >>> d({**a, "action_id": "a3"}, datetime(2026, 2, 1, tzinfo=timezone.utc))
    'expired'
    """

    def __init__(self, memory: int = 1_000_000) -> None:
        self.memory = memory
        self.seen: OrderedDict[str, None] = OrderedDict()

    def __call__(self, action: dict[str, Any], now: datetime) -> str:
        if action["action_id"] in self.seen:
            return "duplicate"
        self.seen[action["action_id"]] = None
        if len(self.seen) > self.memory:
            self.seen.popitem(last=False)
        if action["group"] != "treatment":
            return "control"
        if datetime.fromisoformat(action["expires_at"].replace("Z", "+00:00")) <= now:
            return "expired"
        return "deliver"


def describe(action: dict[str, Any]) -> str:
    """What a mailer would send, from the kind's payload."""
    p, kind = action["payload"], action["kind"]
    if kind == "coupon":
        off = f"{p['percent_off']:g}% off" if "percent_off" in p else f"{p['amount_off']:g} {p['currency']} off"
        return f"coupon {p['code']} ({off}) until {action['expires_at']}"
    if kind == "recommendation":
        return "items " + ", ".join(i["item_id"] for i in p["items"])
    return f"care call, priority {p['priority']}" + (f" ({p['topic']})" if p.get("topic") else "")


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka import Consumer, Producer

    parser = argparse.ArgumentParser(description="Deliver retention actions (an example marketing consumer).")
    parser.add_argument("--topic", default=os.environ.get("RETENTION_TOPIC_ACTIONS", "retention-actions"))
    parser.add_argument("--outcomes-topic", default=os.environ.get("RETENTION_TOPIC_OUTCOMES", "action-outcomes"))
    parser.add_argument("--group", default="marketing-example", help="consumer group (commits its progress)")
    parser.add_argument("--kind", choices=("coupon", "recommendation", "care_outreach"), help="only this kind")
    parser.add_argument("--report", action="store_true", help="report each delivered action on action-outcomes")
    parser.add_argument("--idle-timeout", type=float, default=0.0, help="stop after this many seconds without a record (0: never)")
    parser.add_argument("--now", help="judge expiry at this ISO time instead of the wall clock (replays, tests)")
    args = parser.parse_args(argv)

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": args.group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        # short sessions only matter for the embedded test broker; Kafka's defaults are fine otherwise
        "session.timeout.ms": int(float(os.environ.get("RETENTION_SESSION_TIMEOUT_S", "45")) * 1000),
        "heartbeat.interval.ms": int(float(os.environ.get("RETENTION_HEARTBEAT_INTERVAL_S", "3")) * 1000),
    })
    producer = Producer({"bootstrap.servers": bootstrap}) if args.report else None
    consumer.subscribe([args.topic])
    deliverable, idle = Deliverable(), 0.0
    try:
        while not args.idle_timeout or idle < args.idle_timeout:
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 0.5
                continue
            idle = 0.0
            if msg.error():
                print(f"consumer error: {msg.error()}", file=sys.stderr)
                continue
            action = json.loads(msg.value())
            now = datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now else datetime.now(timezone.utc)
            verdict = deliverable(action, now) if args.kind in (None, action["kind"]) else "other kind"
            if verdict == "deliver":
                print(f"deliver {action['kind']} to {action['user_id']}: {describe(action)} "
                      f"[{action['reason']['rule']}; {action['action_id']}]", flush=True)
                if producer is not None:
                    outcome = {"action_id": action["action_id"], "user_id": action["user_id"],
                               "ts": now.isoformat().replace("+00:00", "Z"), "outcome": "delivered"}
                    producer.produce(args.outcomes_topic, key=action["user_id"].encode(), value=json.dumps(outcome).encode())
                    producer.flush(10)
            else:
                print(f"skip {action['action_id']}: {verdict}", file=sys.stderr, flush=True)
            consumer.commit(msg, asynchronous=False)  # after the action is handled: at least once
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
