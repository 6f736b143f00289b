"""retention: the command line of Retention Streams.

Every command reads its configuration from the environment (see `retention settings`);
options only say what to do. Exit codes: 0 done; 1 records rejected, undelivered or
a check failed; 2 bad configuration or usage, or no broker answered.
"""

from __future__ import annotations

import os

# BLAS on one thread unless the environment says otherwise, set before numpy loads: the
# numeric work here is small (a four-parameter BG/NBD fit, River's dict-based learners), where
# OpenBLAS's threads only contend with the worker for the cores; and a multithreaded dot
# product sums in an order that depends on the machine's cores, so a fit could end elsewhere
# on another machine (docs/evaluation.md, "The replay's speed").
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import logging
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

# Plain help (click's): the rich renderer shows a type for flags (`--help <bool>`).
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode=None,
                  context_settings={"max_content_width": 100})
topics_app = typer.Typer(no_args_is_help=True, help="Topic administration.")
actions_app = typer.Typer(no_args_is_help=True, help="The retention actions, as marketing systems see them.")
app.add_typer(topics_app, name="topics")
app.add_typer(actions_app, name="actions")
policy_app = typer.Typer(no_args_is_help=True, help="The retention policy file (docs/policy.md).")
app.add_typer(policy_app, name="policy")
scores_app = typer.Typer(no_args_is_help=True, help="Every user's latest features and scores, for marketing and analysts.")
app.add_typer(scores_app, name="scores")
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from streams import __version__

        print(f"retention-streams {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Options before the command."""


def _settings():  # imported lazily: `retention --help` stays fast
    from pydantic import ValidationError

    from streams.runtime.logs import configure
    from streams.runtime.settings import Settings, configuration_errors

    try:
        settings = Settings()
    except ValidationError as exc:
        for line in configuration_errors(exc):
            sys.stderr.write(f"invalid configuration: {line}\n")
        raise typer.Exit(2) from None
    configure(settings.log_format, settings.log_level)
    return settings


def _brokers(settings) -> None:  # one line and exit 2 when no broker answers
    from streams.runtime.kafka import BrokersUnreachable, check_brokers

    try:
        check_brokers(settings)
    except BrokersUnreachable as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(2) from None


@app.command()
def broker(port: Annotated[int, typer.Option(help="Port to listen on (loopback).")] = 9092) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory only) in the foreground."""
    import os

    from streams.runtime.broker import broker_command

    from streams.runtime.broker import client_settings_text

    cmd = broker_command(port)
    sys.stdout.write(client_settings_text(port))
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic with RETENTION_PARTITIONS partitions (idempotent)."""
    from streams.runtime.kafka import create_topics

    settings = _settings()
    _brokers(settings)
    created = create_topics(settings)
    err.print(f"created {len(created)} topics: {', '.join(created) or '(all existed)'}")


def _policy(settings):  # the file at RETENTION_POLICY_FILE, or exit 2 with every problem
    from streams.domain.policy_file import PolicyFileError

    try:
        return settings.policy
    except PolicyFileError as exc:
        sys.stderr.write(f"invalid policy file (RETENTION_POLICY_FILE):\n{exc}\n")
        raise typer.Exit(2) from None


@policy_app.command("check")
def policy_check(
    file: Annotated[Optional[Path], typer.Argument(help="The policy file; default: RETENTION_POLICY_FILE (or the shipped deploy/policy.yaml).")] = None,
) -> None:
    """Validate a policy file as the worker would; print its rules, or every problem as file:line: key: problem (exit 2)."""
    import os

    if file is not None:
        os.environ["RETENTION_POLICY_FILE"] = str(file)
    policy = _policy(_settings())
    guards = policy.guards
    print(f"{policy.source}: valid; control share {policy.control_share:g} (by {policy.control_by}); {len(policy.rules)} rules (first match per kind and trigger):")
    for rule in policy.rules:
        print(f"  line {rule.line}: {rule.name}: {rule.trigger} -> {rule.action}")
    budget = guards.daily_budget
    per_kind = ", ".join(f"{k} {b.count if b.count is not None else '-'}" + (f" / value {b.value:g}" if b.value is not None else "")
                         for k, b in budget.per_kind.items())
    print(f"  guards: cooldown days {guards.cooldown_days}; checkout window {guards.checkout_window_minutes:g} min; "
          f"daily budget {budget.count} ({per_kind or 'no per-kind budgets'})")


@app.command()
def worker() -> None:
    """Run one stream worker (Faust). It waits for the brokers first (RETENTION_BROKER_WAIT_S; exit 2 when they never
    answer); SIGTERM stops it gracefully, within RETENTION_SHUTDOWN_TIMEOUT_S (else exit 3); an invalid policy file or no
    model snapshot key stops it at once (exit 2)."""
    from streams.runtime.app import create_app

    settings = _settings()
    _policy(settings)
    _run_faust(settings, lambda: create_app(settings)[0])


def _run_faust(settings: Any, make_app: Callable[[], Any]) -> None:
    """A Faust process of ours: the snapshot key checked (exit 2 without one), the brokers
    waited for (exit 2 when none answers), then the app until it stops."""
    from streams.runtime.logs import worker_logging_config
    from streams.runtime.settings import MissingSnapshotKey
    from streams.runtime.worker import RetentionWorker, wait_for_brokers

    try:
        settings.snapshot_keys
    except MissingSnapshotKey as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(2) from None
    if not wait_for_brokers(settings):
        raise typer.Exit(2)
    faust_app = make_app()
    logging_config = worker_logging_config(settings.log_format, settings.log_level)
    RetentionWorker(faust_app, settings, loglevel=settings.log_level.upper(), logging_config=logging_config,
                    quiet=True).execute_from_commandline()


@app.command()
def trainer() -> None:
    """Run the one model trainer as a process of its own (RETENTION_TRAINER=separate, set for the workers too, so
    that none of them trains). Run exactly one per app id: it learns from model-labels and publishes the model
    snapshots every worker scores with. Exit 2 when RETENTION_TRAINER is not separate (the workers would train as well)."""
    from streams.runtime.app import create_trainer_app

    settings = _settings()
    if settings.trainer != "separate":
        err.print("[red]retention trainer needs RETENTION_TRAINER=separate[/red], for the workers as well: with "
                  f"RETENTION_TRAINER={settings.trainer} a worker trains, and two trainers would publish snapshots")
        raise typer.Exit(2)
    from prometheus_client import REGISTRY

    from streams.runtime import metrics

    REGISTRY.unregister(metrics.WORKER_READY)  # (a worker's: at 0 here, RetentionWorkerNotReady would fire)
    _run_faust(settings, lambda: create_trainer_app(settings))


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON lines, one event per line.")],
    topic: Annotated[str, typer.Option(help="Logical or configured topic: clicks, purchases, reviews, action-outcomes, heartbeats, consents.")],
    rejects: Annotated[Optional[Path], typer.Option(help="Write rejected lines here as JSON lines with their errors.")] = None,
) -> None:
    """Validate every line against the topic's contract, send the valid ones, report the
    rejected. Exit 1 when a line was rejected or a record not delivered."""
    from streams.runtime.publish import Publisher, read_jsonl

    settings = _settings()
    topics = {**settings.inbound_topics, settings.topic_consents: "consents"}
    logical = topics.get(topic, topic)
    if logical not in topics.values():
        err.print(f"[red]unknown topic {topic!r}[/red]; one of {', '.join(topics.values())}")
        raise typer.Exit(2)
    _brokers(settings)
    rejected: list[tuple[int, str, bytes]] = []
    report = Publisher(settings).publish(read_jsonl(file, logical, rejected))
    for line_no, error, _ in rejected[:20]:
        err.print(f"[yellow]line {line_no}[/yellow]: {error}")
    if rejects is not None:
        with rejects.open("w") as out:
            for line_no, error, raw in rejected:
                out.write(json.dumps({"line": line_no, "error": error, "value": raw.decode("utf-8", "replace")}) + "\n")
    for error in report.errors[:5]:
        err.print(f"[yellow]not delivered[/yellow]: {error}")
    err.print(f"sent {report.total - report.failed} records to {logical}; rejected {len(rejected)}; delivery failures {report.failed}")
    raise typer.Exit(1 if report.failed or rejected else 0)


@app.command()
def forget(
    ids: Annotated[list[str], typer.Argument(help="The customers' user ids, as the shop knows them (or pseudonyms, with --pseudonym).")],
    pseudonym: Annotated[bool, typer.Option("--pseudonym", help="The ids are pseudonyms (ps_...), as actions and user-scores carry them.")] = False,
    requested_by: Annotated[Optional[str], typer.Option(help="Who asked (kept in the request, e.g. a ticket number).")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for every confirmation (printed as JSON lines); 0: do not wait.")] = 0.0,
) -> None:
    """Ask the workers to erase customers (erasure-requests); prints each request_id.

    The worker that owns a customer deletes their state, tombstones it, forgets them in
    memory, keeps their pseudonym in the erased-ids set (their events, replayed or new, are
    then not folded) and confirms on erasure-confirmations. Exit 1 when a request was not
    delivered, or not confirmed within --wait."""
    from streams.domain.privacy import is_pseudonym
    from streams.runtime.forget import send_requests, wait_confirmations

    settings = _settings()
    bad = [i for i in ids if not i or len(i) > 128 or (pseudonym and not is_pseudonym(i))]
    if bad:
        err.print(f"[red]not {'a pseudonym' if pseudonym else 'a user id'} (1-128 characters{', ps_ and 40 hex digits' if pseudonym else ''})[/red]: {bad[0]!r}")
        raise typer.Exit(2)
    _brokers(settings)
    try:
        sent = send_requests(settings, ids, pseudonyms=pseudonym, requested_by=requested_by)
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    for request_id, user in sent.items():
        err.print(f"requested {request_id} for {user}")
    if wait <= 0:
        raise typer.Exit(0)
    found = wait_confirmations(settings, set(sent), wait)
    for request_id in sent:
        if request_id in found:
            sys.stdout.write(json.dumps(found[request_id]) + "\n")
    missing = [r for r in sent if r not in found]
    if missing:
        err.print(f"[yellow]{len(missing)} of {len(sent)} not confirmed within {wait:.0f} s[/yellow] (is a worker running?)")
    raise typer.Exit(1 if missing else 0)


@app.command()
def simulate(
    customers: Annotated[int, typer.Option(help="Customers at the start.")] = 1000,
    days: Annotated[float, typer.Option(help="Simulated days.")] = 180.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same shop).")] = 7,
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second; 0 = as fast as possible.")] = 0.0,
    invalid_share: Annotated[float, typer.Option(help="Share of deliberately malformed records.")] = 0.0,
    duplicate_share: Annotated[float, typer.Option(help="Share of records sent twice.")] = 0.0,
    start: Annotated[Optional[datetime], typer.Option(
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
        help="Start of the simulated period, UTC (default 2026-01-01): a later start simulates the same customer ids "
             "in a later period, with event ids of their own.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Publish even if the topics already hold events of the simulated period (an earlier run): "
                        "the workers count each copy they no longer remember as a late event, in lifetime totals again.")] = False,
) -> None:
    """Publish a synthetic shop's clicks, purchases, reviews and heartbeats in event time.

    Refuses (exit 2) when the clicks, purchases or reviews topics already hold an event at or
    after the period's start (by their partitions' last records): a second identical run
    would be counted again."""
    from streams.runtime.kafka import held_records
    from streams.runtime.publish import Publisher, simulation_records, overlap_message
    from streams.simulation import Shop, SimulationConfig
    from streams.simulation.shop import DEFAULT_START

    settings = _settings()
    _brokers(settings)
    config = SimulationConfig(customers=customers, days=days, seed=seed, invalid_share=invalid_share,
                              duplicate_share=duplicate_share, start=(start or DEFAULT_START).replace(tzinfo=timezone.utc))
    start_ms = int(config.start.timestamp() * 1000)
    if not force:
        topics = {settings.topic_clicks: "clicks", settings.topic_purchases: "purchases", settings.topic_reviews: "reviews"}
        held = {topics[t]: found for t, found in held_records(settings, list(topics)).items()}
        if held and max(latest for _, latest in held.values()) >= start_ms:
            err.print(overlap_message(held, start_ms), highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(2)
    shop = Shop(config)
    from rich.progress import Progress, TextColumn

    with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[day]}"), console=err) as bar:
        task = bar.add_task("simulating", total=days * 86_400_000, day="")
        first: list[int] = []

        def tick(record) -> None:  # type: ignore[no-untyped-def]
            first[:] = first or [record.ts_ms]
            bar.update(task, completed=record.ts_ms - first[0], day=f"day {(record.ts_ms - first[0]) / 86_400_000:.0f}")

        report = Publisher(settings).publish(simulation_records(shop), speed=speed or None, on_record=tick)
    err.print(f"published {report.total} records: {dict(report.sent)}; failures {report.failed}")
    raise typer.Exit(1 if report.failed else 0)


@app.command()
def heartbeat(
    every: Annotated[float, typer.Option(min=0.01, help="Seconds between two heartbeats.")] = 60.0,
    lag: Annotated[float, typer.Option(min=0.0, help="Event time of a heartbeat: the wall clock minus this many seconds (the most producers' events trail their event time).")] = 60.0,
    count: Annotated[int, typer.Option(min=0, help="Stop after this many heartbeats (0 = run until SIGTERM or Ctrl-C).")] = 0,
    source: Annotated[Optional[str], typer.Option(help="The heartbeats' `source` field (default: retention-heartbeat@<hostname>).")] = None,
) -> None:
    """Publish event-time heartbeats to every partition of the heartbeats topic, for shops
    whose producers send live events (silent partitions still age). Exit 1 when a heartbeat
    was not delivered to every partition."""
    import socket
    import threading

    from streams.runtime.heartbeat import run
    from streams.runtime.publish import Publisher

    settings = _settings()
    _brokers(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    publisher = Publisher(settings)
    incomplete = run(publisher, every, lag, source or f"retention-heartbeat@{socket.gethostname()}", stop, count)
    publisher.close()
    raise typer.Exit(1 if incomplete else 0)


@actions_app.command("tail")
def actions_tail(
    kind: Annotated[Optional[str], typer.Option(help="Only this kind: coupon, recommendation, care_outreach.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest action instead of new ones.")] = False,
    max_actions: Annotated[int, typer.Option("--max", help="Stop after this many (0 = never).")] = 0,
    idle_timeout: Annotated[float, typer.Option(help="Stop after this many seconds without an action, counted from when the partitions are assigned (0 = never).")] = 0.0,
) -> None:
    """Print retention actions as JSON lines as they arrive.

    It reads every partition directly (no consumer group, nothing committed), so it starts
    at once, even on a broker that holds group joins."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    from streams.runtime.kafka import consumer, messages

    settings = _settings()
    _brokers(settings)
    topic = settings.topic_actions
    reader = consumer(settings, None)
    try:
        meta = reader.list_topics(topic, timeout=settings.connect_timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            sys.stderr.write(f"no topic {topic} (RETENTION_TOPIC_ACTIONS) on {settings.bootstrap_servers}: run `retention topics create`\n")
            raise typer.Exit(2)
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        reader.assign([TopicPartition(topic, p, start) for p in sorted(meta.partitions)])
        printed, last = 0, time.monotonic()  # idle from the assignment, not from the start of the command
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        for msg in messages(reader):
            if msg is None:
                if idle_timeout and time.monotonic() - last > idle_timeout:
                    break
                continue
            last = time.monotonic()
            value = msg.value() or b""
            if kind is not None and json.loads(value).get("kind") != kind:
                continue
            sys.stdout.write(value.decode() + "\n")
            sys.stdout.flush()
            printed += 1
            if max_actions and printed >= max_actions:
                break
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()


@scores_app.command("export")
def scores_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (.csv or .parquet).")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv or parquet (default: from the file's suffix, .csv or .parquet).")] = None,
) -> None:
    """Write every user's latest features and scores (from user-scores) as CSV or Parquet."""
    from streams.runtime.export import export_format, latest_scores, rows, write

    try:
        fmt = export_format(output, fmt)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(2) from None
    settings = _settings()
    _brokers(settings)
    columns, table = rows(latest_scores(settings).values())
    write(output, columns, table, fmt)
    err.print(f"wrote {len(table)} users, {len(columns)} columns to {output} ({fmt})")


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Customers at the start (600 for the longer run of earlier releases).")] = 300,
    days: Annotated[float, typer.Option(help="Simulated days (150 for the longer run of earlier releases).")] = 90.0,
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second; 0 = as fast as possible.")] = 0.0,
    control_share: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Share of customers in the control group (default: control_share of the policy file).")] = None,
    details: Annotated[bool, typer.Option("--details", help="Print every table, an example per rule, two actions and a profile.")] = False,
) -> None:
    """Embedded broker + a worker + the simulator, the loop closed; live progress, then a one-screen summary."""
    from streams.runtime.demo import run_demo

    raise typer.Exit(run_demo(customers=customers, days=days, speed=speed or None, control_share=control_share, details=details))


@app.command()
def bench(
    events: Annotated[Optional[int], typer.Option(help="Records to drive through each pipeline (default 200,000 in backlog mode, 30 s of --rate in live mode).")] = None,
    customers: Annotated[int, typer.Option(help="Customers of the synthetic shop.")] = 1000,
    partitions: Annotated[int, typer.Option(help="Partitions of every topic.")] = 8,
    mode: Annotated[str, typer.Option(help="backlog: publish everything, then drain it (throughput); live: publish at --rate (latency).")] = "backlog",
    rate: Annotated[float, typer.Option(help="Records/s published in live mode.")] = 500.0,
    workers: Annotated[int, typer.Option(help="Worker processes per pipeline.")] = 1,
    skip_naive: Annotated[bool, typer.Option("--skip-naive", help="Measure the full pipeline only.")] = False,
    trainer: Annotated[str, typer.Option(help="worker: a worker of the full pipeline trains (RETENTION_TRAINER=worker); separate: a trainer process does, measured in a row of its own.")] = "worker",
    warm_records: Annotated[int, typer.Option(help="Backlog mode: measure only the records after the first this many (a shop with a history; they are processed too).")] = 0,
) -> None:
    """The full pipeline and a naive Faust pipeline on the same records, side by side: events/s per worker, CPU, peak RSS, latency."""
    from streams.runtime.bench import run_bench

    if mode not in ("backlog", "live"):
        err.print(f"[red]unknown mode {mode!r}: backlog or live[/red]")
        raise typer.Exit(2)
    if trainer not in ("worker", "separate"):
        err.print(f"[red]unknown trainer {trainer!r}: worker or separate[/red]")
        raise typer.Exit(2)
    raise typer.Exit(run_bench(events, customers, partitions, mode, rate, workers, skip_naive, trainer=trainer, warm=warm_records))


def _days(text: str) -> float:
    """A duration such as ``90d``, ``12w`` or ``36h`` (a bare number is days), in days."""
    units = {"d": 1.0, "w": 7.0, "h": 1 / 24}
    text = text.strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


@app.command()
def evaluate(
    transactions: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="Transactions CSV (customer id, timestamp, amount; usual column names detected).")] = None,
    cdnow: Annotated[bool, typer.Option("--cdnow", help="Replay the CDNOW history (Lifetimes wheel data, the eval extra).")] = False,
    cdnow_sample: Annotated[bool, typer.Option("--cdnow-sample", help="With --cdnow: the 2,357-customer sample instead of all 23,570.")] = False,
    cdnow_classic: Annotated[bool, typer.Option("--cdnow-classic", help="The classic split of the CDNOW sample: weeks 1-39 replayed (learning horizon --horizon), every customer scored once at their end for 'buys again in weeks 40-78'; ROC AUC per model.")] = False,
    simulate: Annotated[bool, typer.Option("--simulate", help="Replay the simulator's shop (clicks, purchases, reviews).")] = False,
    customers: Annotated[int, typer.Option(help="With --simulate: customers at the start.")] = 1000,
    days: Annotated[float, typer.Option(help="With --simulate: simulated days.")] = 180.0,
    seed: Annotated[int, typer.Option(help="With --simulate: random seed.")] = 7,
    horizon: Annotated[Optional[str], typer.Option(help="H, e.g. 30d or 13w (default RETENTION_CHURN_HORIZON_DAYS).")] = None,
    period: Annotated[Optional[str], typer.Option(help="Rows of the table: periods of scoring time (default: the horizon).")] = None,
    churn_learners: Annotated[str, typer.Option(help="Online churn learners to compare, comma separated: logreg, logreg-raw, arf, amf, hat.")] = "logreg",
    loyalty_learners: Annotated[str, typer.Option(help="Online loyalty learners: residual, log-linear, poisson, linear, arf, amf, hat.")] = "residual",
    bgnbd_refit: Annotated[str, typer.Option(help="Refit BG/NBD on the history to date this often (event time).")] = "7d",
    learn_churn_early: Annotated[bool, typer.Option("--learn-churn-early", help="Online churn learners learn a 0 as soon as a purchase resolves it (default: at the end of the horizon, when both classes are known).")] = False,
    customer_column: Annotated[Optional[str], typer.Option(help="CSV column of the customer id.")] = None,
    time_column: Annotated[Optional[str], typer.Option(help="CSV column of the timestamp.")] = None,
    amount_column: Annotated[Optional[str], typer.Option(help="CSV column of the amount (else price * quantity).")] = None,
    price_column: Annotated[Optional[str], typer.Option(help="CSV column of the unit price.")] = None,
    quantity_column: Annotated[Optional[str], typer.Option(help="CSV column of the quantity.")] = None,
    date_format: Annotated[Optional[str], typer.Option(help="strptime format of the timestamps, if not detected.")] = None,
    resamples: Annotated[int, typer.Option(help="Resamples of the customers for the paired bootstrap against BG/NBD (0: none).")] = 200,
    blend_path: Annotated[Optional[Path], typer.Option(help="Write the first learners' blend (weights, targets, loyalty scale) at every snapshot to this CSV.")] = None,
    workers: Annotated[int, typer.Option(help="Also run the replay through this many real worker processes on the embedded broker (or KAFKA_BOOTSTRAP_SERVERS, on topics of the run's own) and check that they give the same figures.")] = 0,
) -> None:
    """Replay a purchase history in event time through the engine and print, per period,
    churn AUC and log loss and loyalty MAE and RMSE of the online learners, recency alone
    and BG/NBD, side by side (with --workers N: the same through real workers, compared)."""
    from dataclasses import replace

    from models.churn import CHURN_PIPELINES, LOYALTY_PIPELINES
    from streams.runtime import evaluate as ev

    settings = _settings()
    if sum([transactions is not None, cdnow or cdnow_classic, simulate]) != 1 or (cdnow_classic and workers):
        err.print("[red]give exactly one of --transactions FILE, --cdnow, --cdnow-classic, --simulate (--cdnow-classic in process only)[/red]")
        raise typer.Exit(2)
    churn_kinds = [k.strip() for k in churn_learners.split(",") if k.strip()]
    loyalty_kinds = [k.strip() for k in loyalty_learners.split(",") if k.strip()]
    unknown = [k for k in churn_kinds if k not in CHURN_PIPELINES] + [k for k in loyalty_kinds if k not in LOYALTY_PIPELINES]
    if unknown or not churn_kinds or not loyalty_kinds:
        err.print(f"[red]unknown or missing learners {unknown}[/red]: churn {list(CHURN_PIPELINES)}, loyalty {list(LOYALTY_PIPELINES)}")
        raise typer.Exit(2)
    cfg = settings.engine
    if horizon is not None:
        cfg = replace(cfg, churn_horizon_days=_days(horizon))
    if cdnow_classic:
        from models.datasets import cdnow as cdnow_rows
        from streams.runtime import evaluate_classic

        result = evaluate_classic.classic_split(
            sorted(cdnow_rows(sample=True), key=lambda t: (t.ts, t.customer_id)), cfg, churn_kinds, loyalty_kinds, ev.run_replay,
            resamples=resamples, period_days=_days(period) if period else cfg.churn_horizon_days,
            min_labels=settings.churn_min_labels, bgnbd_refit_days=_days(bgnbd_refit), learn_churn_early=learn_churn_early,
            churn_prior_learns=settings.churn_prior_learns, loyalty_prior_learns=settings.loyalty_prior_learns,
            model_period_days=settings.model_period_days, model_lag_periods=settings.model_lag_periods,
            bgnbd_refit_periods=settings.bgnbd_refit_periods, bgnbd_customers=settings.bgnbd_customers,
            scores_interval_ms=int(settings.scores_interval_s * 1000),
        )
        console = Console(width=200)
        for line in evaluate_classic.report(result):
            console.print(line)
        r = result.replay
        console.print(f"calibration replay: {r.events} events, {r.points} scoring points, {result.seconds:.1f} s "
                      f"({r.events / result.seconds if result.seconds else 0:.0f} events/s)")
        return
    if transactions is not None:
        from models.datasets import Columns, detect_columns, read_transactions

        import csv

        with transactions.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            header = next(csv.reader(handle), [])
        try:
            cols: Columns = detect_columns(header, customer_column, time_column, amount_column, price_column, quantity_column)
        except ValueError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        skipped: list[int] = []
        cols, rows = read_transactions(transactions, cols, date_format, skipped)
        err.print(f"{transactions}: columns {cols._asdict()}; {len(rows)} transactions, {skipped[0]} rows skipped")
        records, source = ev.transaction_records(rows), str(transactions)
    elif cdnow:
        from models.datasets import cdnow as cdnow_rows

        rows = sorted(cdnow_rows(sample=cdnow_sample), key=lambda t: (t.ts, t.customer_id))
        records, source = ev.transaction_records(rows), "CDNOW " + ("sample" if cdnow_sample else "master")
    else:
        records, source = ev.simulated_records(customers, days, seed), f"simulator ({customers} customers, {days:g} days, seed {seed})"
    if workers < 0 or (workers and learn_churn_early):
        err.print("[red]--workers needs a count >= 1, and the workers learn churn at the end of the horizon only (no --learn-churn-early)[/red]")
        raise typer.Exit(2)
    if workers and not simulate:  # the workers' partitions need heartbeats to age silent customers
        records = records + ev.daily_heartbeats(records)
    partitions = settings.partitions if workers else 1
    replay, seconds = ev.run_replay(
        ev.decoded(records, heartbeats=bool(workers)), cfg, churn_kinds, loyalty_kinds,
        period_days=_days(period) if period else cfg.churn_horizon_days,
        min_labels=settings.churn_min_labels, bgnbd_refit_days=_days(bgnbd_refit), learn_churn_early=learn_churn_early,
        churn_prior_learns=settings.churn_prior_learns, loyalty_prior_learns=settings.loyalty_prior_learns,
        model_period_days=settings.model_period_days, model_lag_periods=settings.model_lag_periods, partitions=partitions,
        bgnbd_refit_periods=settings.bgnbd_refit_periods, bgnbd_customers=settings.bgnbd_customers,
        scores_interval_ms=int(settings.scores_interval_s * 1000),
    )
    if workers:
        source += f", in process as {partitions} partitions"
    ev.print_report(replay, seconds, source, resamples=resamples)
    if blend_path is not None:
        ev.write_blend_path(replay, str(blend_path))
    if workers:
        from streams.runtime import evaluate_workers as ew

        run_id = time.strftime("%Y%m%dT%H%M%S")
        overrides = {**ew.run_environment(run_id, partitions, cfg.churn_horizon_days),
                     "RETENTION_CHURN_LEARNER": churn_kinds[0], "RETENTION_LOYALTY_LEARNER": loyalty_kinds[0]}
        workdir = Path("var/evaluate") / run_id
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            labels = ew.through_workers(records, overrides, workers, workdir, len(replay.labels), err.print)
        except RuntimeError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        agreement = ew.compare(replay.labels, labels)
        through = ew.workers_replay(replay, labels, replay.churn_models[0].name, replay.loyalty_models[0].name)
        console = Console(width=200)
        console.print(f"\n[bold]The same history through {workers} worker process(es) and the broker[/bold] "
                      f"({replay.churn_models[0].name} and {replay.loyalty_models[0].name} as the workers scored; the baselines on the same points)")
        ev.print_report(through, time.monotonic() - started, source.replace("in process", "through the workers"), console)
        console.print(agreement.summary())
        raise typer.Exit(0 if agreement.equal else 1)


@app.command("evaluate-reco")
def evaluate_reco(
    customers: Annotated[int, typer.Option(help="Customers at the start.")] = 600,
    days: Annotated[float, typer.Option(help="Simulated days.")] = 150.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same shop).")] = 7,
    k: Annotated[int, typer.Option(help="Length of each recommendation list.")] = 10,
) -> None:
    """Hit rate@k of each recommender on every customer's next purchase (prequential, simulated shop)."""
    from models.reco_eval import report, run

    started = time.monotonic()
    Console().print(report(run(customers, days, seed, k), k))
    err.print(f"{customers} customers (plus arrivals), {days:g} days, seed {seed}: {time.monotonic() - started:.0f} s")


@app.command("evaluate-targeting")
def evaluate_targeting(
    customers: Annotated[int, typer.Option(help="Customers at the start of each simulated shop.")] = 1200,
    days: Annotated[float, typer.Option(help="Simulated days.")] = 180.0,
    seed: Annotated[int, typer.Option(help="First random seed.")] = 1,
    seeds: Annotated[int, typer.Option(min=1, help="Shops to simulate (seeds seed, seed + 1, ...).")] = 5,
    world: Annotated[str, typer.Option(help="How customers respond to a coupon: default, backfire (the highest-risk customers are dormant and a coupon drives half of them away; outcomes over 60 days) or both.")] = "both",
    policy: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="Policy file with an uplift-targeted coupon rule (default: deploy/policies/lapse-uplift.yaml).")] = None,
    learn_days: Annotated[float, typer.Option(help="Days from the first candidate on that only teach the model (not evaluated).")] = 60.0,
    jobs: Annotated[int, typer.Option(min=1, help="Shops simulated at once (processes).")] = 1,
    out: Annotated[Optional[Path], typer.Option(file_okay=False, help="Write summary-<world>.json and the Qini curves qini-<world>.svg here.")] = None,
) -> None:
    """Targeting by uplift against targeting by churn risk, on the simulator: the uplift model
    learns online in the closed loop; every candidate of the coupon rule is judged by its true
    effect; per budget, the true incremental conversions and margin of risk, uplift, random
    and oracle targeting (and two references: by latent state, and by the uplift model's
    inputs fitted to other customers' true effects), and the Qini curves and AUUC, over
    several seeds with intervals."""
    from concurrent.futures import ProcessPoolExecutor

    from streams.domain.policy_file import PolicyFileError, load_policy
    from streams.simulation import SimulationConfig
    from streams.simulation import targeting as tg

    worlds = list(tg.WORLDS) if world == "both" else [world]
    if any(w not in tg.WORLDS for w in worlds):
        err.print(f"[red]unknown world {world!r}[/red]: {', '.join(tg.WORLDS)} or both")
        raise typer.Exit(2)
    path = policy or Path(__file__).resolve().parents[1] / "deploy" / "policies" / "lapse-uplift.yaml"
    try:
        pol = load_policy(path)
    except PolicyFileError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    if not any(r.target == "uplift" and r.action == "coupon" for r in pol.rules):
        err.print(f"[red]{path}: no coupon rule with 'target: uplift'[/red]")
        raise typer.Exit(2)
    started = time.monotonic()
    console = Console()
    for name in worlds:
        sims = [SimulationConfig(customers=customers, days=days, seed=seed + i) for i in range(seeds)]
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(tg.run_seed, sims, [tg.WORLDS[name]()] * seeds, [pol] * seeds, [learn_days] * seeds))
        summary = tg.summary(results)
        console.print(tg.markdown(name, summary) + "\n", markup=False, highlight=False, soft_wrap=True)  # tables unwrapped
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"summary-{name}.json").write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
            tg.write_svg(out / f"qini-{name}.svg", summary["qini"], f"Qini curves, {name} world (mean of {seeds} seeds)")
    err.print(f"{customers} customers (plus arrivals), {days:g} days, seeds {seed}-{seed + seeds - 1}: {time.monotonic() - started:.0f} s")


@app.command("settings")
def settings_table() -> None:
    """Print every setting as a Markdown table (environment variable, default, meaning)."""
    from streams.runtime.settings import settings_markdown

    sys.stdout.write(settings_markdown())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from confluent_kafka import KafkaException
    from pydantic import ValidationError

    from streams.runtime.broker import BrokerNotInstalled
    from streams.runtime.kafka import BrokersUnreachable
    from streams.runtime.settings import configuration_errors

    try:  # what a command did not catch itself: one line, not a traceback
        app()
    except (BrokersUnreachable, BrokerNotInstalled) as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(2)
    except ValidationError as exc:  # Settings() read by demo, bench, evaluate
        sys.stderr.write("".join(f"invalid configuration: {line}\n" for line in configuration_errors(exc)))
        sys.exit(2)
    except KafkaException as exc:
        sys.stderr.write(f"Kafka error: {exc.args[0].str() if exc.args and hasattr(exc.args[0], 'str') else exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
