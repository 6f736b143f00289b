"""The worker's collector settings (streams/runtime/heap.py)."""

from __future__ import annotations

import gc

from streams.runtime import heap


def test_settle_freezes_what_is_alive_and_spaces_out_the_collections() -> None:
    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == heap.THRESHOLDS
        assert heap.THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_settled_puts_the_collector_back_for_the_rest_of_the_process() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with heap.settled():
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == heap.THRESHOLDS
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
