"""``retention``: the command line of Retention Streams.

Every command reads its configuration from the environment (see ``retention settings``);
options only say what to do.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
topics_app = typer.Typer(no_args_is_help=True, help="Topic administration.")
actions_app = typer.Typer(no_args_is_help=True, help="The retention actions, as marketing systems see them.")
app.add_typer(topics_app, name="topics")
app.add_typer(actions_app, name="actions")
scores_app = typer.Typer(no_args_is_help=True, help="Every user's latest features and scores, for marketing and analysts.")
app.add_typer(scores_app, name="scores")
err = Console(stderr=True)


def _settings():  # imported lazily: `retention --help` stays fast
    from streams.runtime.logs import configure
    from streams.runtime.settings import Settings

    try:
        settings = Settings()
    except Exception as exc:  # pydantic.ValidationError: say which variable is wrong
        err.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from None
    configure(settings.log_format, settings.log_level)
    return settings


@app.command()
def broker(port: Annotated[int, typer.Option(help="Port to listen on (loopback).")] = 9092) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory only) in the foreground."""
    import os

    from streams.runtime.broker import broker_command

    cmd = broker_command(port)
    err.print(f"embedded broker on 127.0.0.1:{port}; use KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}. Ctrl-C stops it.")
    os.execv(cmd[0], cmd)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic with RETENTION_PARTITIONS partitions (idempotent)."""
    from streams.runtime.kafka import create_topics

    settings = _settings()
    created = create_topics(settings)
    err.print(f"created {len(created)} topics: {', '.join(created) or '(all existed)'}")


@app.command()
def worker() -> None:
    """Run one stream worker (Faust). SIGTERM stops it gracefully."""
    import faust

    from streams.runtime.app import create_app
    from streams.runtime.logs import worker_logging_config

    settings = _settings()
    faust_app, _ = create_app(settings)
    logging_config = worker_logging_config(settings.log_format, settings.log_level)
    faust.Worker(faust_app, loglevel=settings.log_level.upper(), logging_config=logging_config, quiet=True).execute_from_commandline()


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON lines, one event per line.")],
    topic: Annotated[str, typer.Option(help="Logical or configured topic: clicks, purchases, reviews, action-outcomes, heartbeats.")],
    rejects: Annotated[Optional[Path], typer.Option(help="Write rejected lines here as JSON lines with their errors.")] = None,
) -> None:
    """Validate every line against the topic's contract, send the valid ones, report the rejected."""
    from streams.runtime.publish import Publisher, read_jsonl

    settings = _settings()
    logical = settings.inbound_topics.get(topic, topic)
    if logical not in settings.inbound_topics.values():
        err.print(f"[red]unknown topic {topic!r}[/red]; one of {', '.join(settings.inbound_topics.values())}")
        raise typer.Exit(2)
    rejected: list[tuple[int, str, bytes]] = []
    report = Publisher(settings).publish(read_jsonl(file, logical, rejected))
    for line_no, error, _ in rejected[:20]:
        err.print(f"[yellow]line {line_no}[/yellow]: {error}")
    if rejects is not None:
        with rejects.open("w") as out:
            for line_no, error, raw in rejected:
                out.write(json.dumps({"line": line_no, "error": error, "value": raw.decode("utf-8", "replace")}) + "\n")
    err.print(f"sent {report.total} records to {logical}; rejected {len(rejected)}; delivery failures {report.failed}")
    raise typer.Exit(1 if report.failed else 0)


@app.command()
def simulate(
    customers: Annotated[int, typer.Option(help="Customers at the start.")] = 1000,
    days: Annotated[float, typer.Option(help="Simulated days.")] = 180.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same shop).")] = 7,
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second; 0 = as fast as possible.")] = 0.0,
    invalid_share: Annotated[float, typer.Option(help="Share of deliberately malformed records.")] = 0.0,
    duplicate_share: Annotated[float, typer.Option(help="Share of records sent twice.")] = 0.0,
) -> None:
    """Publish a synthetic shop's clicks, purchases, reviews and heartbeats in event time."""
    from streams.runtime.publish import Publisher, simulation_records
    from streams.simulation import Shop, SimulationConfig

    settings = _settings()
    shop = Shop(SimulationConfig(customers=customers, days=days, seed=seed,
                                 invalid_share=invalid_share, duplicate_share=duplicate_share))
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


@actions_app.command("tail")
def actions_tail(
    kind: Annotated[Optional[str], typer.Option(help="Only this kind: coupon, recommendation, care_outreach.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest action instead of new ones.")] = False,
    max_actions: Annotated[int, typer.Option("--max", help="Stop after this many (0 = never).")] = 0,
    idle_timeout: Annotated[float, typer.Option(help="Stop after this many seconds without an action (0 = never).")] = 0.0,
) -> None:
    """Print retention actions as JSON lines as they arrive."""
    from streams.runtime.kafka import consumer, messages

    settings = _settings()
    reader = consumer(settings, None, **({} if from_beginning else {"auto.offset.reset": "latest"}))
    reader.subscribe([settings.topic_actions])
    printed, last = 0, time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
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
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv or parquet (default: from the file's suffix).")] = None,
) -> None:
    """Write every user's latest features and scores (from user-scores) as CSV or Parquet."""
    from streams.runtime.export import latest_scores, rows, write

    fmt = fmt or ("parquet" if output.suffix == ".parquet" else "csv")
    if fmt not in ("csv", "parquet"):
        err.print(f"[red]unknown format {fmt!r}: csv or parquet[/red]")
        raise typer.Exit(2)
    columns, table = rows(latest_scores(_settings()).values())
    write(output, columns, table, fmt)
    err.print(f"wrote {len(table)} users, {len(columns)} columns to {output} ({fmt})")


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Customers at the start.")] = 600,
    days: Annotated[float, typer.Option(help="Simulated days.")] = 150.0,
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second; 0 = as fast as possible.")] = 0.0,
) -> None:
    """Embedded broker + a worker + the simulator; live progress, then a summary."""
    from streams.runtime.demo import run_demo

    raise typer.Exit(run_demo(customers=customers, days=days, speed=speed or None))


@app.command()
def bench(
    events: Annotated[Optional[int], typer.Option(help="Records to drive through each pipeline (default 200,000 in backlog mode, 30 s of --rate in live mode).")] = None,
    customers: Annotated[int, typer.Option(help="Customers of the synthetic shop.")] = 1000,
    partitions: Annotated[int, typer.Option(help="Partitions of every topic.")] = 8,
    mode: Annotated[str, typer.Option(help="backlog: publish everything, then drain it (throughput); live: publish at --rate (latency).")] = "backlog",
    rate: Annotated[float, typer.Option(help="Records/s published in live mode.")] = 500.0,
    workers: Annotated[int, typer.Option(help="Worker processes per pipeline.")] = 1,
    skip_naive: Annotated[bool, typer.Option("--skip-naive", help="Measure the full pipeline only.")] = False,
) -> None:
    """The full pipeline and a naive Faust pipeline on the same records, side by side: events/s per worker, CPU, peak RSS, latency."""
    from streams.runtime.bench import run_bench

    if mode not in ("backlog", "live"):
        err.print(f"[red]unknown mode {mode!r}: backlog or live[/red]")
        raise typer.Exit(2)
    raise typer.Exit(run_bench(events, customers, partitions, mode, rate, workers, skip_naive))


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


@app.command("settings")
def settings_table() -> None:
    """Print every setting as a Markdown table (environment variable, default, meaning)."""
    from streams.runtime.settings import settings_markdown

    sys.stdout.write(settings_markdown())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
