"""Durability and scaling of per-user state: kill -9 and restart, and two workers rebalancing.

Each test replays the same synthetic shop (fixed seed, 1 % of records re-sent on purpose)
and compares every user's state, read back from the table's changelog topic, with an
uninterrupted run of one worker on its own topics and app id (the ``reference``).

Models are learned by the one trainer (``model-labels`` -> ``model-snapshots``) and chosen
by event time, so the review sentiment features must come out equal too, and the
trainer's label counts and snapshot version after a crash or a rebalance must equal the
uninterrupted run's: no label lost, none learned twice. ``RETENTION_CHURN_MIN_LABELS`` is
set out of reach and the priors' learning (``RETENTION_*_PRIOR_LEARNS``) off, so the lapse
rule decides with the fixed recency formula, as the ordered replay does (see STEADY).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, KafkaError, KafkaException, Message, TopicPartition

from models.bundle import Models
from streams.domain.features import features
from streams.domain.state import UserState, load_state
from streams.runtime.broker import EmbeddedBroker
from streams.runtime.kafka import consumer
from streams.runtime.settings import embedded_overrides
from streams.runtime.processes import WorkerProcess
from streams.runtime.publish import Outgoing, simulation_records
from streams.simulation import Shop, SimulationConfig
from tests.integration.conftest import Pipeline, new_pipeline
from streams.domain.fold import offline_training
from tests.ordered_replay import ordered_replay

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]  # a kill, a restart and two full runs

SHOP = SimulationConfig(customers=50, new_customers_per_day=1.0, days=70, seed=11, duplicate_share=0.01)
# The churn learner never replaces the prior and the prior learns nothing, so the decisions
# are a function of the records alone (as in the ordered replay, which has no review texts).
# The policy is the built-in lapse rule alone, never suppressed by a guard rail, so the
# worker decides what the ordered replay decides (the recommendation rules depend on the
# per-worker recommender, and the ordered replay has no review texts for the care rule;
# the guards are tested in test_actions.py).
LAPSE_ONLY = Path(__file__).resolve().parents[1] / "data" / "policy-lapse-only.yaml"
#: The churn and loyalty scores stay on their fixed recency priors: no learner answers, no
#: learned prior, no BG/NBD fit (the ordered replay sends no segment examples, so its trainer's
#: BG/NBD would see other histories than the worker's).
STEADY = {"RETENTION_CHURN_MIN_LABELS": "1000000000", "RETENTION_CHURN_PRIOR_LEARNS": "false",
          "RETENTION_LOYALTY_PRIOR_LEARNS": "false", "RETENTION_BGNBD_REFIT_PERIODS": "0",
          "RETENTION_POLICY_FILE": str(LAPSE_ONLY)}
LIFETIME = ("clicks", "purchases", "spend_cents", "reviews", "rating_sum", "first_seen", "last_seen",
            "first_purchase", "last_purchase", "carts_abandoned", "unsubscribed")


def history() -> tuple[list[Outgoing], int]:
    """The shop's records in event-time order, and how many of them are re-sent copies."""
    shop = Shop(SHOP)
    records = list(simulation_records(shop))
    return records, shop.counts["duplicates"]


RECORDS, RESENT = history()
NOW = max(r.ts_ms for r in RECORDS)  # every run's features are compared at this event time


@dataclass
class Run:
    states: dict[str, UserState]
    actions: list[dict[str, Any]]
    records: Counter[str]  # retention_records_total by result, summed over the run's workers
    models: dict[str, Any]  # GET /models "snapshot" of the run's last worker once the trainer is done


# --- helpers -----------------------------------------------------------------------------


def publish(pipe: Pipeline, records: Iterable[Outgoing]) -> Counter[str]:
    """Records sent per logical topic (a heartbeat counts once per partition)."""
    publisher = pipe.publisher()
    report = publisher.publish(records)
    publisher.close()
    assert report.failed == 0, report.errors
    return Counter(report.sent)


def committed(pipe: Pipeline) -> Counter[str]:
    """The app's committed offsets summed per logical inbound topic: records done for good.

    Topics are fresh (offsets start at 0), so this is the number of records of a topic the
    group will never read again. Read without joining the group."""
    settings = pipe.settings
    reader = consumer(settings, settings.ingest_group, **{"enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t in settings.inbound_topics for p in range(settings.partitions)]
        out: Counter[str] = Counter()
        for tp in reader.committed(tps, timeout=10):
            out[settings.inbound_topics[tp.topic]] += 0 if tp.offset == OFFSET_INVALID else tp.offset
        return out
    finally:
        reader.close()


def settled(pipe: Pipeline) -> Counter[str]:
    """The committed offsets once they stop moving: a commit the killed worker sent just
    before it died can still land after the kill."""
    before = committed(pipe)
    for _ in range(20):
        time.sleep(0.5)
        now = committed(pipe)
        if now == before:
            return now
        before = now
    raise AssertionError(f"committed offsets still moving after the kill: {dict(before)}")


def wait_committed(pipe: Pipeline, sent: Counter[str], workers: list[WorkerProcess], timeout: float = 180.0) -> None:
    """Until the group has committed every record sent (a batch's offsets are committed once
    its states are on the changelog)."""
    deadline = time.monotonic() + timeout
    while (done := committed(pipe)) != +sent:
        assert any(w.alive for w in workers), f"no worker alive; see {[str(w.log_file) for w in workers]}"
        assert time.monotonic() < deadline, f"committed {dict(done)} of {dict(sent)}"
        time.sleep(0.5)


def processed(worker: WorkerProcess) -> float:
    return sum(v for lab, v in worker.samples("retention_records_total") if lab["result"] != "rekeyed")


def results(worker: WorkerProcess) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, value in worker.samples("retention_records_total"):
        out[labels["result"]] += int(value)
    return out


def read_to_end(pipe: Pipeline, topic: str) -> list[Message]:
    """Every record of a topic, read until each partition reports its end (by the fetch's
    high watermark, which the embedded broker gets right)."""
    reader = consumer(pipe.settings, None, **{"enable.partition.eof": True})
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(pipe.settings.partitions)])
    out: list[Message] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(at_end) < pipe.settings.partitions:
            assert time.monotonic() < deadline, f"{topic}: only partitions {at_end} read to the end"
            for msg in reader.consume(1000, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                else:
                    raise KafkaException(msg.error())
    finally:
        reader.close()
    return out


def latest_states(pipe: Pipeline) -> dict[str, UserState]:
    """Every user's state: the latest value per key on the state changelog topic (users' keys
    are ``u`` + user id, a forgotten one's value is empty)."""
    latest = {msg.key(): msg.value() for msg in read_to_end(pipe, f"{pipe.settings.app_id}-user-state-changelog")}
    return {key[1:].decode(): load_state(value) for key, value in latest.items() if key[:1] == b"u" and value is not None}


def trained(worker: WorkerProcess, covered: int | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """The worker's GET /models snapshot once the trainer has covered ``covered`` (or, with
    None, once it stops moving): the labels learned, the version and boundary."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        status, report = worker.get_json("/models")
        snap = report.get("snapshot") if status == 200 else None
        if snap and (snap["covered"] == covered if covered is not None else snap == last):
            return snap
        assert time.monotonic() < deadline, f"trainer not at {covered}: {snap}; see {worker.log_file}"
        last = snap
        time.sleep(2.0 if covered is None else 0.5)


def collect(pipe: Pipeline, workers: list[WorkerProcess], counts: list[Counter[str]], covered: int | None = None) -> Run:
    actions = [json.loads(m.value()) for m in read_to_end(pipe, pipe.settings.topic_actions)]
    models = trained(workers[-1], covered)
    return Run(latest_states(pipe), actions, sum(counts, Counter()), models)


def view(state: UserState) -> dict[str, Any]:
    """What must not depend on crashes or rebalances: features at NOW (the review sentiment
    ones included: scored by the snapshot of the review's event time) and lifetime counters."""
    return {**features(state, NOW), **{f"state.{name}": getattr(state, name) for name in LIFETIME}, "state.texts": state.texts}


#: Open defect (issue 4), seen once in the rebalance test after the outbox fix: the trainer
#: learned one published score row (a segment example) fewer than the uninterrupted run
#: (1573 of 1574), everything else equal. Suspect: the partition's new owner dates its
#: examples by a clock that restarts at the rebalance, behind a watermark the old owner had
#: sent for it, so the trainer drops the example as already learned. Reported as xfail,
#: and only for exactly that difference; any other difference fails.
#: Another cause, seen on 2026-12-03 with the offset trace (issue 3) and fixed in
#: streams/runtime/transport.py: the new owner of model-labels was handed 30 label records
#: during Faust's post-assignment seek that never reached its trainer (the stream queue is
#: cleared when the flow resumes), and Faust would have committed past them. Kept until it has passed for
#: longer (since the fix: 2 of 2 scripts/kill-loop --variant module runs passed it,
#: with --runxfail, plus 3 of 3 runs of this test alone, 2 of them before the last fix).
SEGMENT_ROW_LOST_AT_REBALANCE = "issue 4: a segment example lost across a rebalance"


def assert_same_learning(run: Run, reference: Run, known_segment_loss: bool = False) -> None:
    """No lost and no doubled learning: the trainer learned the same labels, reviews and
    score rows, up to the same boundary, with the same newest snapshot."""
    keys = ("covered", "boundary", "version", "learned")
    got, want = {k: run.models[k] for k in keys}, {k: reference.models[k] for k in keys}
    if known_segment_loss and got != want:
        lost = want["learned"].get("segment", 0) - got["learned"].get("segment", 0)
        if lost > 0 and {**got, "learned": {**got["learned"], "segment": want["learned"].get("segment")}} == want:
            # dropped tells the suspects apart: more "learned_period" than the reference: dated
            # behind a covered boundary; the same drops: never sent, or still waiting
            pytest.xfail(f"{SEGMENT_ROW_LOST_AT_REBALANCE}: {lost} of {want['learned']['segment']}; dropped "
                         f"{run.models.get('dropped')} vs reference {reference.models.get('dropped')} ({run.models})")
    assert got == want, (run.models, reference.models)


def click_history(pipe: Pipeline, user: str) -> str:
    """What the state changelog and the clicks hold of one user, for a failure's
    message: each changelog record's (partition@offset, clicks, clock, input positions) and the
    user's clicks (offset, id, time, kind). (Found the cause of a lost click once: a record
    whose scoring raised on the fold thread, dead-lettered; see ``records["invalid"]``.)"""
    key = b"u" + user.encode()
    states = [(m.partition(), m.offset(), load_state(m.value())) for m in
              read_to_end(pipe, f"{pipe.settings.app_id}-user-state-changelog") if m.key() == key and m.value()]
    changelog = [f"{p}@{o}: clicks={s.clicks} clock={s.clock} positions={dict(s.positions)}" for p, o, s in states]
    inputs = []
    for topic in (pipe.settings.topic_clicks, pipe.settings.rekey_topic):
        for m in read_to_end(pipe, topic):
            if m.value() and f'"{user}"'.encode() in m.value():
                record = json.loads(m.value())
                inputs.append(f"{topic}[{m.partition()}]@{m.offset()} {record.get('event_id')} {record.get('ts')} {record.get('kind')}")
    return "changelog: " + "; ".join(changelog) + " | inputs: " + ", ".join(inputs)


def assert_same_users(run: Run, reference: Run, pipe: Pipeline | None = None) -> None:
    # No valid record dead-lettered (a record whose processing raises is, so that a bug cannot
    # stop the stream: here it would be a lost event)
    assert run.records["invalid"] == 0, run.records
    assert sorted(run.states) == sorted(reference.states)
    differ = {}
    for user, state in reference.states.items():
        want, got = view(state), view(run.states[user])
        if want != got:
            differ[user] = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    history = "; ".join(f"{user}: {click_history(pipe, user)}" for user in list(differ)[:2]) if differ and pipe else ""
    assert not differ, f"{len(differ)} of {len(reference.states)} users differ (reference, run): {differ} {history}"


def assert_same_actions(run: Run, reference: Run) -> list[tuple[str, str, str]]:
    """The same decisions, each with the same identity. A decision may be re-sent after a
    crash (at-least-once; consumers deduplicate on action_id). Returns (id, reference ts,
    run ts) where the event time of a decision differs: the clock, not the state, sets it."""
    want = {a["action_id"]: a["ts"] for a in reference.actions}
    got = {a["action_id"]: a["ts"] for a in run.actions}
    assert reference.actions and set(got) == set(want), (sorted(set(want) - set(got)), sorted(set(got) - set(want)))
    assert len(reference.actions) == len(want)  # one send per decision without a crash
    return [(aid, want[aid], got[aid]) for aid in sorted(want) if want[aid] != got[aid]]


# --- the uninterrupted run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(broker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Run:
    with new_pipeline(broker_env, tmp_path_factory.mktemp("reference")) as pipe:
        sent = publish(pipe, RECORDS)
        worker = pipe.worker("reference", **STEADY)
        worker.wait_ready()
        worker.wait_processed(sum(sent.values()), timeout=300)
        wait_committed(pipe, sent, [worker])
        run = collect(pipe, [worker], [results(worker)])
    assert run.records["duplicate"] == RESENT  # each re-sent copy counted once
    assert run.models["learned"]["churn"] > 0 and run.models["learned"]["review"] > 0 and run.models["learned"]["segment"] > 0
    # The worker decides what the sorted stream decides, at the same event times.
    settings = pipe.settings
    training = offline_training(
        lambda: Models.fresh(horizon_days=settings.engine.churn_horizon_days, min_labels=10**9, bgnbd_refit_periods=0,
                             churn_kind=settings.churn_learner, loyalty_kind=settings.loyalty_learner),
        settings.model_period_ms, settings.model_lag_periods,
    )
    replayed = ordered_replay(Shop(SHOP), settings.partitions, settings.engine, training)
    assert {a["action_id"]: a["ts"] for a in run.actions} == {a.action_id: a.ts for a in replayed}
    # ... and its trainer learned the churn labels the ordered replay's trainer learned (it
    # has no review texts and publishes no score rows: only churn compares)
    trainer = training.trainer
    if trainer.covered == run.models["covered"]:
        assert trainer.learned["churn"] == run.models["learned"]["churn"]
    else:  # the replay's clock ends at the last record; the live trainer at the lowest partition's watermark
        assert trainer.covered is not None and trainer.covered > run.models["covered"]
    assert run.records["ok"] + run.records["late"] + RESENT + run.records["heartbeat"] == sum(sent.values())
    return run


# --- kill -9 --------------------------------------------------------------------------------


#: The inputs' offsets are committed only after a batch's states are in RocksDB and on the
#: changelog, and its outputs acknowledged (streams/runtime/deliveries.py); the trainer's
#: topic, still read by Faust, is guarded by streams/runtime/transport.py.
@pytest.mark.parametrize("restart", ["same-data-dir", "empty-data-dir"])
def test_kill_9_mid_stream_and_restart_gives_every_user_the_features_of_an_uninterrupted_run(
    pipeline: Pipeline, reference: Run, restart: str
) -> None:
    """``empty-data-dir`` rebuilds every user's state from the changelog alone;
    ``same-data-dir`` resumes from the local RocksDB files a killed process left behind."""
    sent = publish(pipeline, RECORDS)
    total = sum(sent.values())
    first = pipeline.worker("a", **STEADY)
    first.wait_ready()
    deadline = time.monotonic() + 120
    while (before_kill := results(first)).total() < total / 2:
        assert first.alive and time.monotonic() < deadline, f"worker a stuck at {before_kill.total()}; see {first.log_file}"
        time.sleep(0.05)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    resumed_from = settled(pipeline).total()
    assert resumed_from < total  # it really was mid-stream
    second = pipeline.worker("a" if restart == "same-data-dir" else "b", **STEADY)
    second.wait_ready()
    second.wait_processed(total - resumed_from, timeout=300)  # exactly the records after the last commit
    wait_committed(pipeline, sent, [second])
    after = results(second)
    run = collect(pipeline, [first, second], [before_kill, after], covered=reference.models["covered"])

    assert_same_users(run, reference, pipe=pipeline)
    assert_same_learning(run, reference)
    moved = assert_same_actions(run, reference)
    # Redelivered: the records worker a read after its last commit. A batch's states are
    # stored only once its outputs are acknowledged, so most of them were never stored and
    # are applied anew; what must hold is above: every user's features and counters, and
    # every decision, equal those of the uninterrupted run.
    redelivered = before_kill.total() - resumed_from
    print(f"{restart}: killed after >= {before_kill.total()} of {total} records, last commit at {resumed_from}, "
          f">= {redelivered} redelivered; worker b: {dict(after)}; actions sent {len(run.actions)}, "
          f"distinct {len({a['action_id'] for a in run.actions})}; decision times that differ: {moved}")


def test_kill_9_while_a_batchs_outputs_wait_for_their_acknowledgements(broker_env: dict[str, str], reference: Run, tmp_path: Path) -> None:
    """The broker freezes (SIGSTOP) mid-stream at a moment the worker has a folded batch whose
    outputs or changelog records are sent and not acknowledged (its gauges say so), and the
    worker is killed (kill -9) in that state: the batch is neither stored nor committed. The
    broker resumes (and appends what it had received of them: copies the next owner makes
    again), and a new worker on an empty data dir ends with the uninterrupted run's users,
    decisions and learning. A broker of this test alone (the shared one must not freeze)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("freezes the embedded broker")
    broker = EmbeddedBroker(log_file=tmp_path / "broker.log").start()
    try:
        with new_pipeline({**broker_env, **embedded_overrides(broker.bootstrap_servers)}, tmp_path) as pipe:
            sent = publish(pipe, RECORDS)
            total = sum(sent.values())
            first = pipe.worker("a", **STEADY)
            first.wait_ready()
            deadline = time.monotonic() + 120
            while processed(first) < total / 3:
                assert first.alive and time.monotonic() < deadline, f"worker a stuck; see {first.log_file}"
                time.sleep(0.05)
            unacknowledged = 0.0
            for _ in range(50):  # freeze at a moment a folded batch waits for the broker's acknowledgements
                broker.process.send_signal(signal.SIGSTOP)
                time.sleep(0.3)  # (the worker's gauges are set once per cycle)
                unacknowledged = first.total("retention_records_unacknowledged")
                if first.total("retention_batches_unacknowledged") and unacknowledged:
                    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
                    broker.process.send_signal(signal.SIGCONT)
                    break
                broker.process.send_signal(signal.SIGCONT)
                time.sleep(0.1)
            assert not first.alive, f"no moment with a batch waiting for acknowledgements; see {first.log_file}"
            resumed_from = settled(pipe).total()
            assert resumed_from < total
            second = pipe.worker("b", **STEADY)
            second.wait_ready()
            second.wait_processed(total - resumed_from, timeout=300)
            wait_committed(pipe, sent, [second])
            run = collect(pipe, [first, second], [results(second)], covered=reference.models["covered"])
            run.records["invalid"] = results(second)["invalid"]
            assert_same_users(run, reference, pipe=pipe)
            assert_same_learning(run, reference)
            moved = assert_same_actions(run, reference)
            print(f"kill -9 with {unacknowledged:.0f} records sent and not acknowledged, commits at {resumed_from} of "
                  f"{total}; actions sent {len(run.actions)}, distinct {len({a['action_id'] for a in run.actions})}; moved {moved}")
    finally:
        broker.stop()


def test_a_separate_trainer_killed_mid_stream_learns_what_a_workers_own_trainer_learns(pipeline: Pipeline, reference: Run) -> None:
    """``RETENTION_TRAINER=separate``: no worker trains, the ``retention trainer`` process
    does, in a group of its own. Killed with kill -9 half-way and started again on an empty
    data dir, it learns exactly what the uninterrupted run's in-worker trainer learned (no
    label lost or learned twice), and the worker, whose records wait for the snapshots
    meanwhile, decides the same."""
    separate = {**STEADY, "RETENTION_TRAINER": "separate"}
    sent = publish(pipeline, RECORDS)
    total = sum(sent.values())
    first = pipeline.worker("trainer-a", command="trainer", **separate)
    worker = pipeline.worker("w", **separate)
    first.wait_ready()
    worker.wait_ready()
    deadline = time.monotonic() + 120
    while results(worker).total() < total / 2 or not first.total("retention_model_snapshots_total", kind="models"):
        assert first.alive and worker.alive and time.monotonic() < deadline, f"no progress; see {first.log_file}, {worker.log_file}"
        time.sleep(0.05)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    second = pipeline.worker("trainer-b", command="trainer", **separate)
    second.wait_ready()
    worker.wait_processed(total, timeout=300)
    wait_committed(pipeline, sent, [worker])
    run = collect(pipeline, [worker], [results(worker)], covered=reference.models["covered"])

    assert_same_users(run, reference, pipe=pipeline)
    assert_same_learning(run, reference)
    assert {a["action_id"]: a["ts"] for a in run.actions} == {a["action_id"]: a["ts"] for a in reference.actions}
    assert worker.total("retention_model_trainer_records_total") == 0  # the worker did not train
    assert second.total("retention_model_trainer_records_total", result="buffered") > 0


# --- two workers ----------------------------------------------------------------------------


def wait_ready_after_rebalance(worker: WorkerProcess, times: int, timeout: float = 60.0) -> None:
    """Until the worker has finished its ``times``-th assignment (Faust logs "Worker ready"
    after each rebalance, once its tables are recovered)."""
    deadline = time.monotonic() + timeout
    while worker.log_file.read_text(errors="replace").count("Worker ready") < times:
        assert worker.alive and time.monotonic() < deadline, f"not ready {times} times; see {worker.log_file}"
        time.sleep(0.2)


def test_two_workers_split_the_partitions_and_state_moves_with_them(pipeline: Pipeline, reference: Run) -> None:
    third = len(RECORDS) // 3
    one = pipeline.worker("w1", **STEADY)
    one.wait_ready()
    sent = publish(pipeline, RECORDS[:third])
    wait_committed(pipeline, sent, [one])

    two = pipeline.worker("w2", **STEADY)  # its own data dir and web port
    two.wait_ready()
    wait_ready_after_rebalance(two, 1)  # the partitions are split between the two
    wait_ready_after_rebalance(one, 2)
    sent += publish(pipeline, RECORDS[third:2 * third])
    wait_committed(pipeline, sent, [one, two])
    assert processed(two) > 0  # worker 2 took over partitions and their state
    # one model: both workers score with the one trainer's snapshots (once both read the newest)
    deadline = time.monotonic() + 60
    while (views := [trained(w) for w in (one, two)])[0] != views[1]:
        assert time.monotonic() < deadline, views
    assert views[0]["version"] is not None

    one_counts = results(one)
    assert one.stop() == 0  # SIGTERM: graceful, everything moves to worker 2
    wait_ready_after_rebalance(two, 2)  # and all of them are worker 2's
    sent += publish(pipeline, RECORDS[2 * third:])
    wait_committed(pipeline, sent, [two])
    run = collect(pipeline, [one, two], [one_counts, results(two)], covered=reference.models["covered"])

    assert one_counts.total() > 0 and processed(two) > 0
    assert_same_users(run, reference, pipe=pipeline)
    # The table worker 2 serves from, not only the changelog, holds every user (a standby
    # promoted to active must not miss records of the partitions it takes over).
    unknown = [user for user in run.states if two.get_json(f"/users/{user}")[0] != 200]
    assert not unknown, f"worker 2's table lacks {len(unknown)} of {len(run.states)} users: {unknown[:10]}"
    # Every decision of the uninterrupted run is taken, with the same identity and at the
    # same event time: a worker that takes over partitions starts their clocks afresh, and
    # the event-time merge must still release their records in the uninterrupted order.
    want = {a["action_id"]: a for a in reference.actions}
    got = {a["action_id"]: a for a in run.actions}
    heartbeats = one_counts["heartbeat"] + results(two)["heartbeat"]
    context = (f"heartbeats processed {heartbeats} of {sent['heartbeats']} sent (fewer: some were never processed); "
               f"worker 1 {dict(one_counts)}, worker 2 {dict(results(two))}")
    missing = [(want[a]["user_id"], want[a]["ts"]) for a in sorted(set(want) - set(got))]
    extra = [(got[a]["user_id"], got[a]["ts"]) for a in sorted(set(got) - set(want))]
    assert want and not missing and not extra, f"missing decisions {missing}, extra decisions {extra}; {context}"
    moved = [(a, want[a]["ts"], got[a]["ts"]) for a in sorted(want) if want[a]["ts"] != got[a]["ts"]]
    assert not moved, f"decision times that differ {moved}; {context}"
    print(f"rebalance: worker 1 {dict(one_counts)}, worker 2 {dict(results(two))}")
    assert_same_learning(run, reference, known_segment_loss=True)  # last: every other check is strict
