"""The demo's picture: an HTML page with three charts, written next to the run's logs.

- records and actions per day of event time (what the shop sent, what the worker decided);
- per kind of action, the measured intention-to-treat uplift with its interval beside the
  uplift the simulator knows is true;
- calibration of the churn scores the actions carried: per score bin, the share of those
  customers the simulator had really churned at that moment.

Charts are drawn by matplotlib (the ``demo`` extra; ``make demo`` installs it) as inline SVG,
so the page is one self-contained file.
"""

from __future__ import annotations

import html
import io
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streams.domain.timestamps import MS_PER_DAY


def calibration_bins(points: Iterable[tuple[float, bool]], bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean score, share true, count) per equal-width score bin that holds any point.

    >>> calibration_bins([(0.05, False), (0.15, False), (0.95, True), (0.91, False)], bins=2)
    [(0.1, 0.0, 2), (0.93, 0.5, 2)]
    """
    sums: dict[int, list[float]] = {}
    for score, truth in points:
        b = min(int(score * bins), bins - 1)
        acc = sums.setdefault(b, [0.0, 0.0, 0.0])
        acc[0] += score
        acc[1] += 1.0 if truth else 0.0
        acc[2] += 1
    return [(round(s / n, 6), round(t / n, 6), int(n)) for _, (s, t, n) in sorted(sums.items())]


def per_day(times_ms: Iterable[int], start_ms: int) -> Counter[int]:
    """How many of ``times_ms`` fall on each day since ``start_ms``."""
    return Counter((t - start_ms) // MS_PER_DAY for t in times_ms)


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def write_report(path: Path, *, title: str, records: dict[str, Counter[int]], actions: dict[str, Counter[int]],
                 uplift: dict[str, dict[str, Any]], truth: dict[str, dict[str, Any]],
                 calibration: list[tuple[float, float, int]], notes: list[str]) -> Path:
    """Write the page; ``records``/``actions``: per topic/kind, counts per day of event time;
    ``uplift``: per kind, the ITT estimate with ``low``/``high``; ``truth``: per kind, ``true_uplift``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    from matplotlib import pyplot as plt

    charts = []
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for topic, counts in sorted(records.items()):
        days = sorted(counts)
        top.plot(days, [counts[d] for d in days], label=topic)
    top.set_ylabel("records per day")
    top.set_yscale("log")
    top.legend(fontsize=8, ncol=3)
    for kind, counts in sorted(actions.items()):
        days = sorted(counts)
        bottom.plot(days, [counts[d] for d in days], label=kind)
    bottom.set_ylabel("actions per day")
    bottom.set_xlabel("day of event time")
    bottom.legend(fontsize=8)
    charts.append(("Records and actions over event time", _svg(fig)))
    plt.close(fig)

    kinds = sorted(uplift)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, kind in enumerate(kinds):
        u = uplift[kind]
        ax.errorbar([i], [u["estimate"]], yerr=[[u["estimate"] - u["low"]], [u["high"] - u["estimate"]]],
                    fmt="o", color="#1f77b4", capsize=6, label="measured [95 % CI]" if i == 0 else None)
        if kind in truth:
            ax.plot([i], [truth[kind]["true_uplift"]], marker="x", markersize=10, color="#d62728", linestyle="none",
                    label="true" if i == 0 else None)
    ax.axhline(0.0, color="#999", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_xlim(-0.5, max(len(kinds) - 0.5, 0.5))
    ax.set_ylabel("uplift in purchase rate")
    if kinds:
        ax.legend(fontsize=8)
    charts.append(("Uplift per kind of action: measured against the truth", _svg(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="#999", linewidth=0.8, linestyle="--", label="perfect calibration")
    if calibration:
        ax.plot([m for m, _, _ in calibration], [t for _, t, _ in calibration], marker="o", label="actions' churn scores")
        for m, t, n in calibration:
            ax.annotate(str(n), (m, t), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("churn score when the action was decided (bin mean)")
    ax.set_ylabel("share of those customers truly churned")
    ax.legend(fontsize=8, loc="upper left")
    charts.append(("Churn-score calibration (numbers: actions per bin)", _svg(fig)))
    plt.close(fig)

    body = "\n".join(f"<h2>{html.escape(name)}</h2>\n{svg}" for name, svg in charts)
    items = "\n".join(f"<li>{html.escape(note)}</li>" for note in notes)
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body {{ font-family: sans-serif; max-width: 60rem; margin: 2rem auto; }} svg {{ max-width: 100%; height: auto; }}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<ul>
{items}
</ul>
{body}
</body></html>
""", encoding="utf-8")
    return path
