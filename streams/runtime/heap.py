"""The garbage collector, set for a long-lived process that allocates per event (a worker; a
replay of ``retention evaluate``).

Measured on ``retention bench`` (batched path, 60k records): CPython's cyclic collector
took ~9 % of the worker's CPU, most of it in 8 full (generation 2) collections of ~150 ms
each, which walk every container alive: the app, its libraries and the models loaded at
start-up among them, though none of those ever becomes garbage. Almost everything a
record allocates is freed by reference counting, not by the collector.

So once the worker has started, :func:`settle` moves what is alive into the permanent
generation (``gc.freeze``: never scanned again) and raises the thresholds, so the young
collections run less often over the records' short-lived containers and a full one comes
every ~8M net allocations (before: every ~70k). Cycles are still collected, later. In the
same bench afterwards (a gc callback timing each collection): no full collection between
start-up and shutdown, 0.11 s in the young ones of 23 s CPU (before: 2.5 s in all, of 31 s).
A replay (:func:`settled` around it) likewise: ``retention evaluate --cdnow --cdnow-sample
--horizon 90d --resamples 0`` took 46.5 and 45.7 s of CPU before, 40.5 and 42.0 s after (two
interleaved pairs, load 0.3-0.8, the same tables).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Allocations (net of deallocations) between young collections (CPython's default: 700),
#: young collections between middle ones (10) and middle ones between full ones (10).
THRESHOLDS = (20_000, 20, 20)


def settle() -> None:
    """Freeze the start-up heap and space out the collections (once, when the worker's hot
    loop starts; freezing again later only adds what is alive then)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


@contextlib.contextmanager
def settled() -> Iterator[None]:
    """:func:`settle` for a while, in a process that goes on after it (a replay called from a
    test or a script): the thresholds are put back after, and what was frozen is unfrozen unless
    something had frozen objects before (those cannot be told apart: they stay frozen)."""
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    settle()
    try:
        yield
    finally:
        if not frozen:
            gc.unfreeze()
        gc.set_threshold(*thresholds)
