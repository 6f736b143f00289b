"""The prequential metrics stay bounded: a trainer learns for months and every snapshot carries them."""

from __future__ import annotations

import pickle
import random

from river import metrics

from models.prequential import ChurnMetrics


def _stream(n: int, seed: int = 3) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    return [(p, int(rng.random() < p)) for p in (rng.random() for _ in range(n))]


def test_the_rolling_auc_does_not_grow_with_the_stream_and_keeps_its_value() -> None:
    window, points = 200, _stream(5_000)
    ours, reference = ChurnMetrics(window=window), metrics.RollingROCAUC(window_size=window)
    sizes = []
    for i, (p, y) in enumerate(points, 1):
        ours.update(p, y)
        reference.update(bool(y), p)
        if i in (1_000, 5_000):
            sizes.append(len(pickle.dumps(ours)))
    assert len(pickle.dumps(reference)) > 2 * sizes[1]  # River's own buffer grows with every update until read
    assert sizes[1] < 1.2 * sizes[0], sizes
    assert ours.report()["auc"] == reference.get()


def test_a_pickled_metric_reads_the_same_after_loading() -> None:
    m = ChurnMetrics(window=100)
    for p, y in _stream(450):
        m.update(p, y)
    again = pickle.loads(pickle.dumps(m))
    assert again.report() == m.report()
    for p, y in _stream(30, seed=4):
        m.update(p, y)
        again.update(p, y)
    assert again.report() == m.report()
