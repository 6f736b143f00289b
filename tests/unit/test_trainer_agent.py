"""The trainer agent's start (streams/runtime/agents/trainer.py), without a broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from streams.runtime import heap
from streams.runtime.agents.trainer import TrainerAgent
from streams.runtime.settings import Settings


class NoSnapshots:
    """A follower of an empty model-snapshots topic."""

    refusals: Counter[str] = Counter()

    async def sync(self) -> None:
        return None

    def latest(self) -> tuple[None, None, None]:
        return None, None, None


def agent(settle_heap: bool) -> TrainerAgent:
    a = object.__new__(TrainerAgent)  # (no Faust app: only what _trainer reads)
    a.settings, a.follower, a.trainer, a.settle_heap = Settings(partitions=3), NoSnapshots(), None, settle_heap
    return a


@pytest.mark.parametrize("settle_heap, settles", [(True, 1), (False, 0)])
def test_a_trainer_process_settles_its_heap_once_when_the_trainer_first_starts(monkeypatch: Any, settle_heap: bool, settles: int) -> None:
    """``retention trainer`` freezes its start-up heap once (the collector walked it at every
    full collection: ~10 % of its samples after start-up in a py-spy profile); a worker's trainer leaves that to the worker."""
    calls: list[int] = []
    monkeypatch.setattr(heap, "settle", lambda: calls.append(1))
    a = agent(settle_heap)

    async def start_twice() -> tuple[Any, Any]:
        first = await a._trainer()
        a.trainer = None  # as after a rebalance
        return first, await a._trainer()

    first, second = asyncio.run(start_twice())
    assert first.partitions == second.partitions == 3 and first.covered is None
    assert len(calls) == settles
