"""`retention evaluate --workers N`: the replay through the broker and real workers gives the
in-process replay's figures, point by point."""

from __future__ import annotations

import csv
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DAY = 86_400_000


def history(path: Path, customers: int = 24, days: int = 75, seed: int = 5) -> int:
    """A purchase history: customers with their own pace, some of whom stop buying."""
    rng = random.Random(seed)
    t0 = 20_454 * DAY  # 2026-01-01
    rows = []
    for c in range(customers):
        gap, stop = rng.uniform(2, 12), rng.uniform(10, days)
        t = rng.uniform(0, 10)
        while t < min(stop, days):
            rows.append((f"c{c:03d}", int(t0 + t * DAY), round(rng.uniform(5, 80), 2)))
            t += rng.expovariate(1 / gap)
    rows.sort(key=lambda r: r[1])
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["customer_id", "timestamp", "amount"])
        writer.writerows(rows)
    return len(rows)


def test_two_workers_give_the_in_process_replays_figures(broker_env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    assert history(source) > 100
    env = {**os.environ, **broker_env, "RETENTION_PARTITIONS": "4", "RETENTION_CHURN_MIN_LABELS": "20"}
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "evaluate", "--transactions", str(source), "--horizon", "14d", "--period", "30d",
         "--workers", "2"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [agreed] = re.findall(r"agree on all (\d+) matured scoring points", result.stdout)
    assert int(agreed) > 100
    assert "in process as 4 partitions" in result.stdout and "through the workers as 4 partitions" in result.stdout
    # the learners' figures printed from the workers' predictions are the replay's, digit for digit
    rows = [line for line in result.stdout.splitlines() if re.match(r"│ (churn-logreg|loyalty-residual|recency|bgnbd) ", line)]
    assert len(rows) == 8 and rows[:4] == rows[4:], "\n".join(rows)
    assert "2 worker(s) ready" in result.stderr  # (> 100 labels, min 20: learned predictions are compared, not only priors)
    assert list((tmp_path / "var" / "evaluate").iterdir()), "the run's worker logs are kept"
