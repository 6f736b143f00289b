"""``retention evaluate --workers N``: the same replay through a broker and real workers.

The records the in-process replay decodes are published, as a producer would publish
them, to topics of their own (named after the run, so a real cluster's topics are never
touched) on the embedded broker, or on the cluster of ``KAFKA_BOOTSTRAP_SERVERS``. N
``retention worker`` processes fold them in, score them with the one trainer's snapshots
and send every matured label, with the predictions stored at its scoring time, to
``model-labels``. Those records are read back and set against the replay's, point by
point: the online learners' figures are recomputed from the workers' predictions, so a
table printed from them equals the replay's only if every point, label and prediction does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from models.examples import ChurnExample, decode_example, examples_in
from streams.domain.evaluation import Replay
from streams.runtime.broker import cluster_or_embedded
from streams.runtime.kafka import create_topics, read_topic
from streams.runtime.processes import WorkerProcess
from streams.runtime.publish import Outgoing, Publisher
from streams.runtime.settings import Settings

#: The topic settings a run names after itself (``RETENTION_TOPIC_*``), so it never shares a topic with a live app.
TOPICS = ("clicks", "purchases", "reviews", "outcomes", "heartbeats", "actions", "dead_letters", "scores", "model_labels", "model_snapshots")

#: The predictions stored at scoring time that a label carries: the answers and each learner's
#: two candidates (prior, River pipeline), which the trainer's gates compare.
STORED_PREDICTIONS = ("churn_p", "loyalty_p", "churn_prior_p", "churn_learned_p", "loyalty_prior_p", "loyalty_learned_p")

#: Prediction equality: both sides compute the same floats; the JSON round trip keeps them exactly.
TOLERANCE = 1e-9


def run_environment(run_id: str, partitions: int, horizon_days: float) -> dict[str, str]:
    """Settings overrides of one evaluation run: its own app id and topics, its partitions and horizon."""
    env = {f"RETENTION_TOPIC_{name.upper()}": f"evaluate-{run_id}-{name.replace('_', '-')}" for name in TOPICS}
    env.update({
        "RETENTION_APP_ID": f"retention-evaluate-{run_id}",
        "RETENTION_PARTITIONS": str(partitions),
        "RETENTION_CHURN_HORIZON_DAYS": repr(horizon_days),
    })
    return env


def published_labels(settings: Settings, expected: int, timeout: float) -> dict[str, ChurnExample]:
    """The matured horizon-end labels on ``model-labels``, by id (a re-sent copy counts once)."""
    out: dict[str, ChurnExample] = {}
    for msg in read_topic(settings, settings.topic_model_labels, idle_s=3.0, at_least=expected, timeout=timeout):
        for record in examples_in(decode_example(msg.value())):
            if isinstance(record, ChurnExample) and record.days is not None:
                out.setdefault(record.id, record)
    return out


def through_workers(
    records: list[Outgoing], overrides: dict[str, str], workers: int, workdir: Path, expected_labels: int,
    say: Callable[[str], object], timeout: float = 1800.0,
) -> dict[str, ChurnExample]:
    """Publish ``records``, let ``workers`` worker processes process all of them, and
    return the labels they sent the trainer. Raises RuntimeError if they stop short."""
    with contextlib.ExitStack() as stack:
        env = {**cluster_or_embedded(stack, workdir, say), **overrides}
        saved = dict(os.environ)
        stack.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
        os.environ.update(env)
        settings = Settings()
        create_topics(settings)
        procs = [WorkerProcess(env, workdir / f"data-{i}", workdir / f"worker-{i}.log") for i in range(workers)]
        for proc in procs:
            stack.callback(proc.stop)
            proc.start()
        for proc in procs:
            proc.wait_ready()
        say(f"{workers} worker(s) ready (pids {', '.join(str(p.process.pid) for p in procs if p.process)}); publishing {len(records)} records")
        publisher = Publisher(settings)
        report = publisher.publish(records)
        publisher.close()
        if report.failed:
            raise RuntimeError(f"{report.failed} records were not delivered: {report.errors[:3]}")
        deadline = time.monotonic() + timeout
        while (done := sum(p.total("retention_records_total") - p.total("retention_records_total", result="rekeyed") for p in procs)) < report.total:
            dead = [p.log_file for p in procs if not p.alive]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"workers stopped short at {done:.0f} of {report.total} records; see {dead or [p.log_file for p in procs]}")
            time.sleep(0.5)
        say(f"workers processed {report.total} records; reading model-labels")
        return published_labels(settings, expected_labels, timeout=120.0)


@dataclass
class Agreement:
    """How the workers' scoring points compare with the replay's."""

    points: int = 0
    missing: list[str] = field(default_factory=list)  #: the replay's, not sent by the workers
    extra: list[str] = field(default_factory=list)  #: the workers', not in the replay
    different: list[str] = field(default_factory=list)  #: same point, another label, features or prediction

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def summary(self) -> str:
        if self.equal:
            return f"the workers and the in-process replay agree on all {self.points} matured scoring points (labels, features, predictions)"
        return (
            f"the workers and the in-process replay DIFFER: {len(self.missing)} points only in the replay, {len(self.extra)} only "
            f"from the workers, {len(self.different)} with another label, features or prediction (e.g. "
            f"{(self.missing + self.extra + self.different)[:3]})"
        )


def _same(a: float | None, b: float | None) -> bool:
    return (a is None) == (b is None) and (a is None or abs(a - b) <= TOLERANCE)  # type: ignore[operator]


def compare(replay_labels: dict[str, ChurnExample], worker_labels: dict[str, ChurnExample]) -> Agreement:
    """Point by point: the label, the features and every stored prediction (:data:`STORED_PREDICTIONS`)."""
    agreement = Agreement(points=len(replay_labels))
    agreement.missing = sorted(set(replay_labels) - set(worker_labels))
    agreement.extra = sorted(set(worker_labels) - set(replay_labels))
    for key in sorted(set(replay_labels) & set(worker_labels)):
        difference = _difference(replay_labels[key], worker_labels[key])
        if difference:
            agreement.different.append(f"{key}: {difference}")
    return agreement


def _difference(a: ChurnExample, b: ChurnExample) -> str | None:
    """What differs between the replay's label ``a`` and the workers' ``b`` (None: nothing)."""
    from streams.domain.features import MODEL_FEATURES

    if a.days != b.days:
        return f"purchase days {a.days} vs {b.days}"
    for name, x, y in zip(MODEL_FEATURES, a.features, b.features):
        if not _same(x, y):
            return f"{name} {x} vs {y}"
    for name in STORED_PREDICTIONS:
        x, y = getattr(a, name), getattr(b, name)
        if not _same(x, y):
            return f"{name} {x} vs {y}"
    return None


def workers_replay(replay: Replay, worker_labels: dict[str, ChurnExample], churn_name: str, loyalty_name: str) -> Replay:
    """A copy of ``replay``'s scoring in which the deployed learners' predictions are the
    workers' (the baselines score the same points as in the replay). Points the replay did
    not score are left out (they are counted by :func:`compare`)."""
    out = Replay(replay.cfg, replay.churn_models, replay.loyalty_models, period_days=replay.period_ms / 86_400_000)
    out.start, out.end, out.events, out.points = replay.start, replay.end, replay.events, replay.points
    out.bgnbd, out.states, out.path = replay.bgnbd, replay.states, replay.path
    for label in worker_labels.values():
        user_id, scored_at = label.id.rsplit("/", 1)[0].rsplit("@", 1)
        known = replay.scored.get((user_id, int(scored_at)))
        if known is None or label.days is None:
            continue
        predictions = dict(known[0])
        predictions[churn_name] = (float(label.churn_p or 0.0), 0.0)
        predictions[loyalty_name] = (0.0, float(label.loyalty_p or 0.0))
        out.predictions[(user_id, int(scored_at))] = predictions
        out._score(user_id, int(scored_at), None, label.days)
    return out
