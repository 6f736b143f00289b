"""``retention bench``: the full pipeline and a naive Faust pipeline, side by side, in one run.

Both pipelines get the same synthetic records (the simulator's, no malformed or duplicate
ones), on their own topics of the same broker, with the same settings, one after the
other (never at once: they would share two cores). For each, real worker processes are
started and read from outside only: processed records from their ``/metrics``
(``retention_records_total``), CPU time from ``/proc/<pid>/stat``, peak RSS from
``/proc/<pid>/status`` (VmHWM), latency from ``retention_record_latency_seconds``.

Modes:

- ``backlog``: every record is published first (with its event time as Kafka timestamp,
  as a replay), then the workers start and drain it. Throughput is sustained records/s
  between 5 % and 95 % of the records processed: the first 5 % include the first fetches
  and cold RocksDB, the last 5 % the tail where some partitions have ended and the merge
  waits on its tick. Latency is not measured (records wait in the backlog by design).
- ``live``: the workers start first, then records are published at a fixed rate with the
  Kafka timestamp set to the send time, so the latency histogram measures send ->
  processed (producer linger, broker, fetch wait, merge wait and processing included).
  The first 5 % (at least 1 s of records) are a warm-up, excluded by subtracting the
  histogram and counters read when the warm-up was processed.

The machine is noisy: compare the two pipelines' figures of one run (the ratio), not
runs with each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streams.runtime.broker import EmbeddedBroker, cluster_or_embedded
from streams.runtime.kafka import create_topics
from streams.runtime.processes import WorkerProcess
from streams.runtime.publish import Outgoing, Publisher, simulation_records
from streams.runtime.settings import Settings
from streams.simulation import Shop, SimulationConfig

PIPELINES = {"full": None, "naive": "streams.runtime.bench_naive"}  # name -> worker module (None: retention worker)
TOPICS = ("CLICKS", "PURCHASES", "REVIEWS", "OUTCOMES", "HEARTBEATS", "ACTIONS", "DEAD_LETTERS", "SCORES", "MODEL_LABELS", "MODEL_SNAPSHOTS")
LATENCY = "retention_record_latency_seconds"
#: How often the workers' /metrics pages are read: each read costs the worker ~10 ms of CPU to
#: render (the observer's cost is in the figures; at 5 reads/s it was ~5 % of a core).
SAMPLE_EVERY_S = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """What the bench reads of its workers at one moment."""

    t: float  # time.monotonic()
    records: float  # processed inbound records, summed over workers (re-keys not counted)
    cpu_s: float  # CPU seconds (user + system) of the worker processes so far
    buckets: dict[float, float]  # latency histogram: upper bound -> cumulative count, summed
    trainer_cpu_s: float = 0.0  # CPU seconds of a separate trainer process so far (--trainer separate)
    dues: float = 0.0  # users checked at their event-time due time, summed over workers (retention_due_checks_total)
    due_cpu_s: float = 0.0  # CPU seconds the workers spent on those checks (retention_due_check_cpu_seconds_total)
    broker_cpu_s: float = 0.0  # CPU seconds of the embedded broker so far (none for a cluster)


@dataclass
class Result:
    pipeline: str
    mode: str
    workers: int
    records: int  # records in the measured window
    wall_s: float
    per_worker: float  # records/s per worker over the window
    cpu_s: float  # CPU seconds of the workers over the window
    cpu_pct: float  # of one core, per worker
    cpu_us_per_record: float
    peak_rss_mb: float  # the largest VmHWM among the workers
    latency_ms: tuple[float, float, float] | None  # p50, p95, p99
    published_per_s: float  # rate the records were published at
    fifths_us: tuple[float, ...] | None = None  # CPU µs/record of each fifth of the window (backlog)
    #: due checks per record in each fifth (backlog, full pipeline)
    fifths_dues: tuple[float, ...] | None = None
    #: CPU µs per record without the due checks' CPU, each fifth (backlog, full pipeline)
    fifths_net_us: tuple[float, ...] | None = None
    due_check_us: float | None = None  #: CPU µs per due check over the window (full pipeline)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def quantile(q: float, buckets: dict[float, float]) -> float:
    """The ``q`` quantile of a cumulative histogram, interpolated linearly within a bucket
    as Prometheus' ``histogram_quantile`` does; the largest finite bound if it falls in +Inf.

    >>> quantile(0.5, {0.1: 50, 0.2: 100, float("inf"): 100})
    0.1
    >>> round(quantile(0.99, {0.1: 50, 0.2: 100, float("inf"): 100}), 3)
    0.198
    >>> quantile(0.99, {0.1: 50, 0.2: 90, float("inf"): 100})
    0.2
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            inside = buckets[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, buckets[bound]
    return lower


def sample(workers: list[WorkerProcess], trainer: WorkerProcess | None = None, broker_pid: int | None = None) -> Sample:
    records, cpu, buckets, dues, due_cpu = 0.0, 0.0, {}, 0.0, 0.0
    for worker in workers:
        # one page read: the worker renders it
        families = worker.named_samples("retention_records_total", f"{LATENCY}_bucket", "retention_due_checks_total",
                                        "retention_due_check_cpu_seconds_total")
        for name, labels, value in families:
            if name == "retention_due_checks_total":
                dues += value
            elif name == "retention_due_check_cpu_seconds_total":
                due_cpu += value
            elif "le" in labels:
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
            elif labels.get("result") != "rekeyed":
                records += value
        cpu += cpu_seconds(worker.process.pid)
    trainer_cpu = cpu_seconds(trainer.process.pid) if trainer is not None and trainer.process is not None else 0.0
    broker_cpu = cpu_seconds(broker_pid) if broker_pid is not None else 0.0
    return Sample(time.monotonic(), records, cpu, buckets, trainer_cpu, dues, due_cpu, broker_cpu)


def bench_records(events: int, customers: int, seed: int, partitions: int) -> list[Outgoing]:
    """The first ``events`` wire records of a synthetic shop (a heartbeat counts once per
    partition), ending before now so that live mode's send-time stamps are never behind
    the events' own times."""
    days = 3650.0
    start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days + 1)
    shop = Shop(SimulationConfig(customers=customers, days=days, seed=seed, start=start))
    out, count = [], 0
    for record in simulation_records(shop):
        out.append(record)
        count += partitions if record.topic == "heartbeats" else 1
        if count >= events:
            return out
    return out


def publish_paced(publisher: Publisher, records: list[Outgoing], rate: float) -> None:
    """Send at ``rate`` wire records/s, each stamped with its send time (CreateTime = now)."""
    start, first = time.monotonic(), publisher.report.total
    client = publisher.client
    for record in records:
        due = start + (publisher.report.total - first) / rate
        while (wait := due - time.monotonic()) > 0:
            client.poll(wait)
        publisher.send(replace(record, ts_ms=int(time.time() * 1000)))
    client.flush(60)


def wait_processed(
    workers: list[WorkerProcess], count: int, trace: list[Sample], stall_s: float = 120.0, trainer: WorkerProcess | None = None,
    broker_pid: int | None = None,
) -> Sample:
    """Sample the workers every ``SAMPLE_EVERY_S`` until they have processed ``count`` records."""
    last_progress = time.monotonic()
    while True:
        now = sample(workers, trainer, broker_pid)
        if trace and now.records > trace[-1].records:
            last_progress = now.t
        trace.append(now)
        if now.records >= count:
            return now
        if not all(w.alive for w in workers + ([trainer] if trainer else [])):
            raise RuntimeError(f"a worker died; see {[str(w.log_file) for w in workers + ([trainer] if trainer else [])]}")
        if now.t - last_progress > stall_s:
            raise TimeoutError(f"no progress for {stall_s:.0f} s at {now.records:.0f} of {count} records")
        time.sleep(SAMPLE_EVERY_S)


def first_at(trace: list[Sample], count: float) -> Sample:
    return next(s for s in trace if s.records >= count)


#: The five fifths of a backlog run's measured window (5 %..95 % of the records): whether a
#: cost grows for the whole run or settles once the shop's customers have a history.
FIFTHS = tuple((0.05 + 0.18 * i, 0.05 + 0.18 * (i + 1)) for i in range(5))


def measured_at(share: float, warm: int, total: int) -> float:
    """The count of processed records at ``share`` of a backlog run's measured part: the
    records after the first ``warm`` (which are processed, and not measured).

    >>> measured_at(0.05, 0, 1000), measured_at(0.05, 600, 1000), measured_at(0.95, 600, 1000)
    (50.0, 620.0, 980.0)
    """
    return warm + share * (total - warm)


def per_record(trace: list[Sample], start: float, end: float, value: Callable[[Sample], float]) -> float:
    """How much ``value`` grew per record between the samples where ``start`` and ``end``
    records were processed (the first samples at or past them)."""
    a, b = first_at(trace, start), first_at(trace, end)
    return (value(b) - value(a)) / max(b.records - a.records, 1)


def cpu_us_between(trace: list[Sample], start: float, end: float) -> float:
    """CPU µs per record between the samples where ``start`` and ``end`` records were processed
    (a flat cost gives the same figure for the first and the last fifth of a run)."""
    return 1e6 * per_record(trace, start, end, lambda s: s.cpu_s)


def due_split(trace: list[Sample], start: float, end: float) -> tuple[float, float]:
    """(due checks per record, CPU µs per record without the due checks' CPU) between the
    samples where ``start`` and ``end`` records were processed. A worker's CPU goes to the
    records it reads and to the users whose due time comes (sweeps, labels maturing, lapse
    checks); the second grow with the customers known, not with the records.

    >>> trace = [Sample(0, records=0, cpu_s=0, buckets={}), Sample(1, records=1000, cpu_s=0.25, buckets={}, dues=100, due_cpu_s=0.1)]
    >>> [round(v, 3) for v in due_split(trace, 0, 1000)]
    [0.1, 150.0]
    """
    return per_record(trace, start, end, lambda s: s.dues), 1e6 * per_record(trace, start, end, lambda s: s.cpu_s - s.due_cpu_s)


def measure(
    name: str, mode: str, base_env: dict[str, str], records: list[Outgoing], workdir: Path,
    partitions: int, workers: int, rate: float, console: Console, trainer: str = "worker", warm: int = 0,
    broker_pid: int | None = None,
) -> list[Result]:
    """The pipeline's figures; with ``trainer`` separate (the full pipeline), a second row:
    the trainer process's CPU per record of the same window; given the embedded broker's
    ``broker_pid``, a row of its CPU per record too. ``warm`` (backlog): the window
    and its fifths cover the records after the first ``warm`` (a shop with a history)."""
    suffix = uuid.uuid4().hex[:8]
    env = {
        **base_env,
        "RETENTION_APP_ID": f"bench-{name}-{suffix}",
        "RETENTION_PARTITIONS": str(partitions),
        **{f"RETENTION_TOPIC_{topic}": f"bench-{topic.lower().replace('_', '-')}-{suffix}" for topic in TOPICS},
    }
    separate = trainer == "separate" and PIPELINES[name] is None
    if separate:
        env["RETENTION_TRAINER"] = "separate"
    os.environ.update(env)
    settings = Settings()
    create_topics(settings)
    publisher = Publisher(settings)
    total = sum(partitions if r.topic == "heartbeats" else 1 for r in records)

    def at(share: float) -> float:
        return measured_at(share, warm, total)

    procs = [
        WorkerProcess(env, workdir / name / f"w{i}" / "data", workdir / name / f"w{i}" / "worker.log", module=PIPELINES[name])
        for i in range(workers)
    ]
    trainer_proc = WorkerProcess(env, workdir / name / "trainer" / "data", workdir / name / "trainer" / "trainer.log",
                                 command="trainer") if separate else None
    trace: list[Sample] = []
    with contextlib.ExitStack() as stack:
        if mode == "backlog":
            started = time.monotonic()
            publisher.publish(records)
            published_per_s = total / (time.monotonic() - started)
        for proc in procs + ([trainer_proc] if trainer_proc else []):
            stack.callback(proc.stop)
            proc.start()
            console.print(f"{name} {'trainer' if proc is trainer_proc else 'worker'} pid {proc.process.pid}, log {proc.log_file}")
        for proc in procs + ([trainer_proc] if trainer_proc else []):
            proc.wait_ready()
        if mode == "backlog":
            wait_processed(procs, total, trace, trainer=trainer_proc, broker_pid=broker_pid)
            begin, end = first_at(trace, at(FIFTHS[0][0])), first_at(trace, at(FIFTHS[-1][1]))
            latency = fifths = None
            # the first and the last fifth of the measured window; none if no sample fell inside
            # the first (a worker can drain a burst between two samples while one is slow)
            bounds = [(at(first), at(last)) for first, last in FIFTHS]
            if begin.records >= bounds[0][1]:
                console.print(f"[yellow]{name}: the first sample past 5 % of the measured records came at {begin.records / total:.0%} of all: "
                              f"the window starts there, and there are no fifths[/yellow]")
            else:
                fifths = tuple(cpu_us_between(trace, *bound) for bound in bounds)
                splits = [due_split(trace, *bound) for bound in bounds]
        else:
            warm_up = max(int(0.05 * len(records)), int(rate))  # records (a heartbeat fans out to every partition)
            publish_paced(publisher, records[:warm_up], rate)
            begin = wait_processed(procs, publisher.report.total, trace, trainer=trainer_proc, broker_pid=broker_pid)
            started, before = time.monotonic(), publisher.report.total
            publish_paced(publisher, records[warm_up:], rate)
            published_per_s = (publisher.report.total - before) / (time.monotonic() - started)
            end = wait_processed(procs, total, trace, trainer=trainer_proc, broker_pid=broker_pid)
            window = {b: end.buckets[b] - begin.buckets.get(b, 0.0) for b in end.buckets}
            latency = tuple(1000 * quantile(q, window) for q in (0.5, 0.95, 0.99))
            fifths = None
        rss = max(peak_rss_mb(p.process.pid) for p in procs)
        trainer_rss = peak_rss_mb(trainer_proc.process.pid) if trainer_proc else 0.0
        if publisher.report.failed:
            raise RuntimeError(f"{publisher.report.failed} records not delivered: {publisher.report.errors[:3]}")
    wall = end.t - begin.t
    done = end.records - begin.records
    cpu = end.cpu_s - begin.cpu_s
    results = [Result(
        name, mode, workers, int(done), wall, done / wall / workers, cpu, 100 * cpu / wall / workers,
        1e6 * cpu / done, rss, latency, published_per_s, fifths,  # type: ignore[arg-type]
    )]
    dues = end.dues - begin.dues
    if fifths is not None and dues > 0:  # (the naive pipeline has no due checks)
        results[0].fifths_dues = tuple(d for d, _ in splits)
        results[0].fifths_net_us = tuple(n for _, n in splits)
        results[0].due_check_us = 1e6 * (end.due_cpu_s - begin.due_cpu_s) / dues
    if trainer_proc is not None:  # what the one trainer spent on the same records (it kept up if the run ended)
        tcpu = end.trainer_cpu_s - begin.trainer_cpu_s
        tfifths = None
        if fifths is not None:  # (backlog, a sample inside the first fifth)
            tfifths = tuple(1e6 * per_record(trace, at(first), at(last), lambda s: s.trainer_cpu_s)
                            for first, last in FIFTHS)
        results.append(Result(f"{name}: its trainer", mode, 1, int(done), wall, done / wall, tcpu, 100 * tcpu / wall,
                              1e6 * tcpu / done, trainer_rss, None, published_per_s, tfifths))
    if broker_pid is not None:  # what the embedded broker spent serving the same records
        bcpu = end.broker_cpu_s - begin.broker_cpu_s
        results.append(Result(f"{name}: the broker", mode, 1, int(done), wall, done / wall, bcpu, 100 * bcpu / wall,
                              1e6 * bcpu / done, peak_rss_mb(broker_pid), None, published_per_s))
    return results


def machine_ceilings(results: list[Result], cores: int) -> list[str]:
    """Per pipeline, in backlog mode: the records/s this machine's ``cores`` would give if the
    workers and the trainer used every core the broker leaves them at the CPU per record
    measured (their rows summed), and the share of it the run reached. It bounds what more
    workers on the same machine can add, whatever their scaling.

    The embedded broker's CPU is taken as the share of the cores it used in the run, not as a
    cost per record: it serves its clients' fetches and heartbeats at about the same share
    whatever the rate (~0.2 of a core at 200 records/s live and at 4,000 in a backlog).

    >>> w = Result("full", "backlog", 1, 1000, 1.0, 2500.0, 0.3, 30.0, 300.0, 1.0, None, 0.0)
    >>> t = Result("full: its trainer", "backlog", 1, 1000, 1.0, 2500.0, 0.06, 6.0, 60.0, 1.0, None, 0.0)
    >>> b = Result("full: the broker", "backlog", 1, 1000, 1.0, 2500.0, 0.2, 20.0, 80.0, 1.0, None, 0.0)
    >>> machine_ceilings([w, t, b], 2)
    ["full: 2 cores, less the broker's 0.20, at 360 CPU µs per record (workers 300, trainer 60) give at most 5,000 records/s; this run reached 2,500 (50%)"]
    """
    lines = []
    for r in results:
        if r.mode != "backlog" or ":" in r.pipeline:
            continue
        others = [o for o in results if o.pipeline.startswith(f"{r.pipeline}: ")]
        broker = sum(o.cpu_s / o.wall_s for o in others if o.pipeline.endswith(": the broker") and o.wall_s > 0)
        parts = [("workers", r.cpu_us_per_record)] + [
            (o.pipeline.rpartition(" ")[2], o.cpu_us_per_record) for o in others if not o.pipeline.endswith(": the broker")]
        total = sum(us for _, us in parts)
        if total <= 0 or broker >= cores:
            continue
        ceiling = (cores - broker) * 1e6 / total
        reached = r.per_worker * r.workers
        less = f", less the broker's {broker:.2f}," if broker else ""
        lines.append(f"{r.pipeline}: {cores} cores{less} at {total:,.0f} CPU µs per record ("
                     + ", ".join(f"{name} {us:,.0f}" for name, us in parts)
                     + f") give at most {ceiling:,.0f} records/s; this run reached {reached:,.0f} ({reached / ceiling:.0%})")
    return lines


def result_table(results: list[Result]) -> Table:
    table = Table(title="retention bench: both pipelines measured in this run")
    columns = ("pipeline", "mode", "workers", "records", "wall s", "events/s per worker", "CPU s", "CPU % per worker",
               "CPU µs/event", "µs first→last fifth", "peak RSS MB", "p50 ms", "p95 ms", "p99 ms")
    for column in columns:
        table.add_column(column, justify="left" if column in ("pipeline", "mode") else "right")
    rows = list(results)
    for r in rows:
        lat = [f"{v:,.0f}" for v in r.latency_ms] if r.latency_ms else ["-"] * 3
        fifths = f"{r.fifths_us[0]:,.0f}→{r.fifths_us[-1]:,.0f}" if r.fifths_us else "-"
        table.add_row(r.pipeline, r.mode, str(r.workers), f"{r.records:,}", f"{r.wall_s:.1f}", f"{r.per_worker:,.0f}",
                      f"{r.cpu_s:.1f}", f"{r.cpu_pct:.0f}", f"{r.cpu_us_per_record:,.0f}", fifths, f"{r.peak_rss_mb:.0f}", *lat)
    by = {r.pipeline: r for r in results}
    if {"full", "naive"} <= by.keys():
        f, n = by["full"], by["naive"]
        lat = [f"{a / b:.2f}" for a, b in zip(f.latency_ms, n.latency_ms)] if f.latency_ms and n.latency_ms else ["-"] * 3
        table.add_row("full/naive", "", "", "", "", f"{f.per_worker / n.per_worker:.2f}", "", f"{f.cpu_pct / n.cpu_pct:.2f}",
                      f"{f.cpu_us_per_record / n.cpu_us_per_record:.2f}", "", f"{f.peak_rss_mb / n.peak_rss_mb:.2f}", *lat)
    return table


def run_bench(
    events: int | None, customers: int, partitions: int, mode: str, rate: float, workers: int,
    skip_naive: bool, seed: int = 7, workdir: Path | None = None, trainer: str = "worker", warm: int = 0,
) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    events = events or (200_000 if mode == "backlog" else int(30 * rate))
    if warm and (mode != "backlog" or not 0 < warm < events):
        console.print(f"[red]--warm-records {warm:,}: in backlog mode only, more than 0 and fewer than the {events:,} records[/red]")
        return 2
    workdir = workdir or Path("var/bench") / time.strftime("%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    try:
        with contextlib.ExitStack() as stack:
            brokers: list[EmbeddedBroker] = []
            env = cluster_or_embedded(stack, workdir, console.print, brokers)
            broker_pid = brokers[0].process.pid if brokers and brokers[0].process is not None else None
            records = bench_records(events, customers, seed, partitions)
            total = sum(partitions if r.topic == "heartbeats" else 1 for r in records)
            console.print(f"{total:,} records ({len(records):,} before heartbeats fan out to {partitions} partitions), "
                          f"{customers} customers, mode {mode}" + (f" at {rate:,.0f} records/s" if mode == "live" else "")
                          + (f", measured after the first {warm:,}" if warm else ""))
            results = []
            for name in [n for n in PIPELINES if not (skip_naive and n == "naive")]:
                results += measure(name, mode, env, records, workdir, partitions, workers, rate, console, trainer, warm, broker_pid)
                os.environ.clear()
                os.environ.update(saved)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    console.print(result_table(results))
    for r in results:
        if r.fifths_dues is not None and r.fifths_net_us is not None and r.due_check_us is not None:
            console.print(f"{r.pipeline}: due checks per record first→last fifth {r.fifths_dues[0]:.3f}→{r.fifths_dues[-1]:.3f}, "
                          f"{r.due_check_us:,.0f} CPU µs each; CPU µs per record without them "
                          f"{r.fifths_net_us[0]:,.0f}→{r.fifths_net_us[-1]:,.0f}")
            console.print(f"{r.pipeline}: by fifth, due checks per record {', '.join(f'{d:.3f}' for d in r.fifths_dues)}; "
                          f"CPU µs per record without them {', '.join(f'{n:,.0f}' for n in r.fifths_net_us)}")
    for line in machine_ceilings(results, os.cpu_count() or 1):
        console.print(line)
    for r in results:
        if r.mode == "live" and r.published_per_s < 0.95 * rate:
            console.print(f"[yellow]{r.pipeline}: published at {r.published_per_s:,.0f} records/s, below --rate[/yellow]")
    (workdir / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    console.print(f"results in {workdir / 'results.json'}")
    return 0

