"""``retention demo``: the whole path on one machine, with live progress and a summary.

Starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), creates the
topics, starts a worker process, publishes a synthetic shop (with a few malformed and
duplicate records on purpose), waits until the worker has processed everything, reads
back ``retention-actions`` and ``dead-letters`` and checks the actions against the
simulator's ground truth.

The loop is closed (:mod:`streams.runtime.feedback`): the actions the worker decides are
delivered back to the simulated customers while the shop is published, they respond
with known effects (:mod:`streams.simulation.offers`), and the summary sets the measured
uplift of ``GET /actions/stats`` beside the true one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from streams.domain.policy_file import DEFAULT_POLICY, load_policy
from streams.domain.timestamps import MS_PER_DAY, parse_ts
from streams.runtime.broker import cluster_or_embedded
from streams.runtime.feedback import MarketingLoop
from streams.runtime.kafka import create_topics, read_topic
from streams.runtime.processes import WorkerProcess
from streams.runtime.publish import Publisher, simulation_records
from streams.runtime.settings import Settings
from streams.simulation import OfferEffects, Shop, SimulationConfig


def policy_with_control_share(path: Path, share: float) -> Path:
    """The shipped policy file with another ``control_share``, written to ``path``."""
    text, n = re.subn(r"(?m)^control_share: .*$", f"control_share: {share}", DEFAULT_POLICY.read_text())
    if n != 1:
        raise ValueError(f"{DEFAULT_POLICY} has no top-level control_share line")
    path.write_text(text)
    load_policy(path)  # refuses a share outside [0, 1] with the file's own message
    return path


def run_demo(customers: int, days: float, speed: float | None, workdir: Path | None = None, control_share: float | None = None,
             details: bool = False) -> int:
    console = Console()
    workdir = workdir or Path("var/demo") / time.strftime("%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        env = cluster_or_embedded(stack, workdir, console.print)
        if control_share is not None:  # a larger control group: narrower uplift intervals
            env["RETENTION_POLICY_FILE"] = str(policy_with_control_share(workdir / "policy.yaml", control_share))
        os.environ.update(env)
        settings = Settings()
        create_topics(settings)
        worker = WorkerProcess(env, workdir / "data", workdir / "worker.log")
        stack.callback(worker.stop)
        worker.start().wait_ready()
        console.print(f"worker pid {worker.process.pid}, metrics at http://127.0.0.1:{worker.web_port}/metrics, log {worker.log_file}")

        config = SimulationConfig(customers=customers, days=days, seed=7, invalid_share=0.002, duplicate_share=0.01)
        shop = Shop(config, OfferEffects(window_days=settings.attribution_window_days))
        marketing = MarketingLoop(settings, shop, worker)
        stack.callback(marketing.close)
        publisher = Publisher(settings)
        # published: event-time days of the shop (the total is known, so the ETA is); processed:
        # the records published so far
        columns = (TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:
            sim = bar.add_task("published", total=days, info=f"day 0/{days:g}")
            work = bar.add_task("processed", total=None, info="")
            seen = {"t0": 0, "last": 0.0}
            daily: dict[str, Counter[int]] = {}  # records per topic per day of event time (the report)

            def tick(record) -> None:  # type: ignore[no-untyped-def]
                marketing.pace(record)  # the actions decided so far reach the customers
                seen["t0"] = seen["t0"] or record.ts_ms
                daily.setdefault(record.topic, Counter())[(record.ts_ms - seen["t0"]) // MS_PER_DAY] += 1
                now = time.monotonic()
                if now - seen["last"] > 0.25:
                    seen["last"] = now
                    day = min((record.ts_ms - seen["t0"]) / 86_400_000, days)
                    published = publisher.report.total
                    bar.update(sim, completed=day, info=f"day {day:.0f}/{days:g}, {published:,} records")
                    done = worker.total("retention_records_total") - worker.total("retention_records_total", result="rekeyed")
                    bar.update(work, completed=done, total=max(published, 1),
                               info=f"{done:,.0f}/{published:,} records, {worker.total('retention_actions_total'):.0f} actions")

            started = time.monotonic()
            report = publisher.publish(simulation_records(shop), speed=speed, on_record=tick)
            publisher.close()
            bar.update(sim, completed=days, info=f"day {days:g}/{days:g}, {report.total:,} records")
            bar.update(work, total=report.total)
            deadline = time.monotonic() + 600
            while (done := worker.total("retention_records_total") - worker.total("retention_records_total", result="rekeyed")) < report.total:
                if time.monotonic() > deadline or not worker.alive:
                    console.print(f"[red]worker stopped short at {done:.0f} of {report.total}; see {worker.log_file}[/red]")
                    return 1
                bar.update(work, completed=done, info=f"{done:,.0f}/{report.total:,} records, {worker.total('retention_actions_total'):.0f} actions")
                time.sleep(0.25)
            bar.update(work, completed=report.total, info=f"{report.total:,}/{report.total:,} records, "
                                                          f"{worker.total('retention_actions_total'):.0f} actions")
            elapsed = time.monotonic() - started

        actions = [json.loads(msg.value()) for msg in read_topic(settings, settings.topic_actions, at_least=int(worker.total('retention_actions_total')))]
        dead = [json.loads(msg.value()) for msg in read_topic(settings, settings.topic_dead_letters, at_least=int(worker.total('retention_dead_letters_total')))]
        with open(workdir / "actions.jsonl", "w") as out:  # to compare runs (action_id: one per decision)
            out.writelines(json.dumps(action, sort_keys=True) + "\n" for action in actions)
        print_summary(console, shop, report.sent, worker, actions, dead, details)
        status, stats = worker.get_json("/actions/stats")
        clock_ms = int(min(v for _, v in worker.samples("retention_event_time_seconds")) * 1000)
        truth = shop.uplift_truth(clock_ms - settings.engine.attribution.lateness_ms)
        itt_truth = shop.itt_truth(clock_ms - settings.engine.attribution.lateness_ms, settings.policy.control_by)
        print_uplift(console, stats if status == 200 else {}, truth, len(marketing.offered), settings.uplift_confidence, itt_truth, details)
        with open(workdir / "uplift.json", "w") as out:
            json.dump({"measured": stats, "truth": truth, "itt_truth": itt_truth}, out, indent=1)
        picture = write_picture(workdir, shop, daily, seen["t0"], actions, stats if status == 200 else {}, itt_truth,
                                f"{report.total:,} records, {days:g} days of event time, {customers} customers at the start")
        console.print(
            f"{report.total:,} records ({days:g} days of event time) published and processed in {elapsed:.0f} s "
            f"of wall time: {report.total / elapsed:,.0f} records/s through one worker (paced by the closed loop: not a benchmark)"
        )
        console.print(f"kept in {workdir}: worker.log, actions.jsonl, uplift.json" + ("" if details else "; `retention demo --details` prints every table"))
        console.print(f"the picture: {picture}" if picture else "no picture: matplotlib is missing (pip install 'retention-streams[demo]')")
        return 0 if actions and dead else 1


def write_picture(workdir: Path, shop: Shop, daily: dict[str, Counter[int]], start_ms: int, actions: list[dict],
                  stats: dict, itt_truth: dict, subtitle: str) -> Path | None:
    """report.html next to the logs (None without matplotlib): records and actions over event
    time, measured uplift against the truth, the actions' churn-score calibration."""
    from streams.runtime.demo_report import calibration_bins, per_day, write_report

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    kinds: dict[str, list[int]] = {}
    for a in actions:
        kinds.setdefault(a["kind"], []).append(parse_ts(a["ts"]))
    uplift = {kind: arms["itt"]["uplift"] for kind, arms in stats.get("by_kind", {}).items() if (arms.get("itt") or {}).get("uplift")}
    scored = [(a["reason"]["scores"]["churn"], shop.state_at(a["user_id"], parse_ts(a["ts"])).value == "churned")
              for a in actions if a["group"] == "treatment" and "churn" in a["reason"].get("scores", {})]
    return write_report(
        workdir / "report.html", title=f"Retention Streams demo: {subtitle}", records=daily,
        actions={kind: per_day(times, start_ms) for kind, times in kinds.items()}, uplift=uplift, truth=itt_truth,
        calibration=calibration_bins(scored),
        notes=["Same seed, same shop: offers reach the simulated customers at the worker's pace, so counts vary a little from run to run.",
               "Uplift: a purchase within the attribution window after the customer's first decision of the kind, treatment minus control (95 % interval); true: known to the simulator.",
               "Calibration: the churn score each treated action carried when it was decided, against the simulator's latent state of the customer then."],
    )


def print_summary(console: Console, shop: Shop, sent: Counter[str], worker: WorkerProcess, actions: list[dict], dead: list[dict],
                  details: bool = False) -> None:
    """One screen by default; ``details``: every table, an example per rule, two actions and a profile."""
    results = Table(title="Records in", show_lines=False)
    for column in ("topic", "published", "ok", "late", "duplicate", "invalid", "rekeyed"):
        results.add_column(column, justify="right" if column != "topic" else "left")
    for topic, count in sorted(sent.items()):
        row = [worker.total("retention_records_total", topic=topic, result=r) for r in ("ok", "late", "duplicate", "invalid", "rekeyed")]
        if topic == "heartbeats":
            row[0] = worker.total("retention_records_total", topic=topic, result="heartbeat")
        results.add_row(topic, str(count), *(f"{v:.0f}" for v in row))
    console.print(results)

    reasons = Counter(d["error"].split(" - at ")[0][:90] for d in dead)
    table = Table(title=f"Dead letters: {len(dead)} on the dead-letter topic, top reasons")
    table.add_column("count", justify="right")
    table.add_column("error")
    for reason, count in reasons.most_common(6 if details else 3):
        table.add_row(str(count), reason)
    console.print(table)

    if not details:
        kinds = Counter((a["kind"], a["group"]) for a in actions)
        suppressed_n = sum(v for _, v in worker.samples("retention_actions_suppressed_total"))
        console.print(f"Retention actions: {len(actions)} on the actions topic: " + "; ".join(
            f"{kind} {kinds[(kind, 'treatment')]} treatment / {kinds[(kind, 'control')]} control"
            for kind in sorted({k for k, _ in kinds})) + f"; {suppressed_n:.0f} decided but suppressed by the guard rails",
            highlight=False)
    if details:
        by = Counter((a["kind"], a["reason"]["rule"], a["group"]) for a in actions)
        table = Table(title=f"Retention actions: {len(actions)} on the actions topic, by kind and rule (policy: {worker.env.get('RETENTION_POLICY_FILE', 'deploy/policy.yaml')})")
        for column in ("kind", "rule", "group", "count"):
            table.add_column(column, justify="right" if column == "count" else "left")
        for (kind, rule, group), count in sorted(by.items()):
            table.add_row(kind, rule, group, str(count))
        console.print(table)
        suppressed = Table(title="Decided but suppressed by the guard rails (not sent)")
        for column in ("kind", "reason", "count"):
            suppressed.add_column(column, justify="right" if column == "count" else "left")
        for labels, value in sorted(worker.samples("retention_actions_suppressed_total"), key=lambda s: (s[0]["kind"], s[0]["reason"])):
            suppressed.add_row(labels["kind"], labels["reason"], f"{value:.0f}")
        console.print(suppressed)
        print_examples(console, actions)
    ground_truth(console, shop, worker, actions)
    if details:
        print_profile(console, worker, actions)


def print_examples(console: Console, actions: list[dict]) -> None:
    console.print("why, one example per rule:")
    for rule in sorted({a["reason"]["rule"] for a in actions}):
        a = next(x for x in actions if x["reason"]["rule"] == rule)
        r = a["reason"]
        scores = ", ".join(f"{k} {v:.2f}" for k, v in r["scores"].items())
        context = f"{r.get('trigger')}, stage {r.get('lifecycle_stage')}, tier {r.get('loyalty_tier')}, segment {r.get('segment')}"
        payload = json.dumps(a["payload"])
        if len(payload) > 90:  # whole items, never a JSON cut mid-token
            payload = json.dumps({k: (v[:2] + ["..."] if isinstance(v, list) and len(v) > 2 else v) for k, v in a["payload"].items()})
        console.print(f"  {rule}: {a['kind']} {payload} for {a['user_id']} at {a['ts']}; "
                      f"{context}; scores {scores}; models {r['model_versions']}", highlight=False)


def ground_truth(console: Console, shop: Shop, worker: WorkerProcess, actions: list[dict]) -> None:
    coupons = [a for a in actions if a["kind"] == "coupon"]
    states = Counter(shop.state_at(a["user_id"], parse_ts(a["ts"])).value for a in coupons)
    truth = ", ".join(f"{state} {count / len(coupons):.0%}" for state, count in states.most_common()) if coupons else "-"
    console.print(f"ground truth of the customers at the moment of their coupon ({len(coupons)} coupons): {truth}")
    prior = worker.total("retention_model_prior_active", model="churn-logreg")
    console.print(
        f"churn model: {worker.total('retention_model_labels_learned', model='churn-logreg'):.0f} matured labels learned; "
        + ("still on the recency prior" if prior else "learned model in use")
    )


def print_profile(console: Console, worker: WorkerProcess, actions: list[dict]) -> None:
    for action in actions[:2]:
        console.print_json(json.dumps(action))
    if actions:
        user = actions[0]["user_id"]
        status, profile = worker.get_json(f"/users/{user}")
        picked = {k: profile.get(k) for k in ("user_id", "ts", "scores", "model_versions", "priors", "last_purchase")} if status == 200 else profile
        if status == 200:
            picked["features"] = {k: profile["features"][k] for k in ("recency_days", "purchases_90d", "spend_365d", "gap_mean_days", "days_active_30d", "sessions_30d", "carts_abandoned_30d", "sentiment_mean")}
        console.print(f"GET /users/{user} -> {status} (selected fields)")
        console.print_json(json.dumps(picked))


def print_uplift(console: Console, stats: dict, truth: dict, offered: int, confidence: float, itt_truth: dict | None = None,
                 details: bool = False) -> None:
    """Measured (GET /actions/stats) beside true uplift (the simulator's), per kind: the
    intention-to-treat contrast (one observation per customer) is the uplift; the
    per-decision contrast, which the rules' feedback biases upwards, is shown beside it."""
    itt_truth = itt_truth or {}
    if not details:
        compact = Table(title=f"What the actions achieved ({offered} delivered back to the shop)")
        for column in ("kind", "customers T/C", "measured uplift [95 % CI]", "true"):
            compact.add_column(column, justify="left" if column == "kind" else "right")
        for kind, arms in sorted(stats.get("by_kind", {}).items()):
            it = arms.get("itt") or {}
            iu, real = it.get("uplift"), itt_truth.get(kind, {})
            compact.add_row(kind, f"{it.get('treatment', {}).get('matured', 0)}/{it.get('control', {}).get('matured', 0)}",
                            f"{iu['estimate']:+.3f} [{iu['low']:+.3f}, {iu['high']:+.3f}]" if iu else "-",
                            f"{real['true_uplift']:+.3f}" if real else "-")
        console.print(compact)
        console.print("uplift: a purchase within the attribution window after the customer's first decision of the kind, "
                      "treatment minus control; true: known to the simulator (docs/measuring-actions.md)")
        return
    table = Table(title=f"What the actions achieved: measured vs true uplift ({offered} actions delivered back to the shop)")
    for column in ("kind", "customers T/C", "converted T/C", "uplift [CI]", "true uplift", "expected",
                   "decisions T/C (matured)", "redeemed T", "per decision [CI]", "true per decision"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind, arms in sorted(stats.get("by_kind", {}).items()):
        t, c, u = arms["treatment"], arms["control"], arms["uplift"]
        it = arms.get("itt") or {"treatment": {"matured": 0, "conversions": 0}, "control": {"matured": 0, "conversions": 0}, "uplift": None}
        iu, real, itt_real = it["uplift"], truth.get(kind, {}), itt_truth.get(kind, {})
        interval = lambda v: f"{v['estimate']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" if v else "-"  # noqa: E731
        table.add_row(
            kind, f"{it['treatment']['matured']}/{it['control']['matured']}",
            f"{it['treatment']['conversions']}/{it['control']['conversions']}", interval(iu),
            f"{itt_real['true_uplift']:+.3f}" if itt_real else "-", f"{itt_real['expected_uplift']:+.3f}" if itt_real else "-",
            f"{t['decisions']}/{c['decisions']} ({t['matured']}/{c['matured']})", str(t["redemptions"]), interval(u),
            f"{real['true_uplift']:+.3f}" if real else "-",
        )
    console.print(table)
    outcomes = "; ".join(f"{kind}: " + ", ".join(f"{k} {n}" for k, n in sorted(by.items())) for kind, by in sorted(stats.get("outcomes", {}).items()))
    console.print(f"outcomes on action-outcomes: {outcomes or '-'}")
    console.print(
        "uplift: intention to treat, one observation per customer: a purchase within the attribution window after its "
        f"first decision of the kind, treatment minus control customers, with Newcombe's {100 * confidence:g} % interval; "
        "true: the effect of being assigned to treatment on that purchase (the simulator knows both potential outcomes); "
        "expected: from the effect parameters. Per decision: every matured decision, treatment minus control, with an "
        "interval that counts customers; biased upwards when the rules fire on the customers' own purchases (docs/uplift.md); "
        "its truth: mean of Y1 - Y0 over the same decisions"
    )
