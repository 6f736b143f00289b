"""The examples a worker makes go to the trainer packed, in the order that the trainer's
periods need: every example before the watermark or forget that follows it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from models.examples import Examples, Forget, ReviewExample, SegmentExample, Watermark, decode_example, encode_example, examples_in
from streams.runtime.agents import batched
from streams.runtime.agents.batched import BatchIngest


def ingest(pack: int) -> Any:
    """A BatchIngest with only what sending labels needs; what it sends is recorded."""
    ingest: Any = object.__new__(BatchIngest)
    ingest.settings = SimpleNamespace(model_labels_pack=pack, topic_model_labels="model-labels")
    ingest.period_ms = 1000
    ingest.labels, ingest.labels_text = [], 0
    ingest.sent = []
    ingest._emit = lambda topic, key, value, partition=None, headers=None: ingest.sent.append((topic, partition, decode_example(value)))
    return ingest


def segment(i: int) -> SegmentExample:
    return SegmentExample(id=f"u{i}@{i}", at=i, x={"recency_days": float(i)})


def test_a_micro_batchs_examples_go_as_one_record_before_the_watermark_that_vouches_for_them() -> None:
    w = ingest(pack=512)
    for i in range(3):
        w._label(segment(i))
    assert w.sent == []
    w._watermark(SimpleNamespace(partition=2, marked=None), 5000)
    assert w.sent == [("model-labels", 0, Examples(items=[segment(0), segment(1), segment(2)])),
                      ("model-labels", 0, Watermark(partition=2, clock_ms=5000))]


def test_a_forget_goes_alone_after_the_examples_made_before_it() -> None:
    w = ingest(pack=512)
    w._label(segment(1))
    w._label(segment(2))
    w._label(Forget(user="u1"))
    w._label(segment(3))
    w._send_labels()  # the end of the micro-batch (_seal)
    assert [r for _, _, r in w.sent] == [Examples(items=[segment(1), segment(2)]), Forget(user="u1"), segment(3)]


def test_a_full_pack_is_sent_at_once_and_review_texts_bound_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    w = ingest(pack=2)
    for i in range(5):
        w._label(segment(i))
    assert [len(examples_in(r)) for _, _, r in w.sent] == [2, 2]
    monkeypatch.setattr(batched, "LABELS_TEXT_MAX", 10)
    w = ingest(pack=512)
    w._label(ReviewExample(id="r1", at=1, text="x" * 6, rating=2))
    w._label(ReviewExample(id="r2", at=2, text="y" * 6, rating=5))
    assert [[e.id for e in examples_in(r)] for _, _, r in w.sent] == [["r1", "r2"]]


def test_pack_1_sends_one_example_per_record_as_older_trainers_read_them() -> None:
    w = ingest(pack=1)
    w._label(segment(1))
    w._label(segment(2))
    assert [r for _, _, r in w.sent] == [segment(1), segment(2)]


def test_a_pack_with_an_example_of_a_newer_format_is_refused() -> None:
    raw = encode_example(Examples(items=[segment(1)])).replace(b'"v":1}]', b'"v":2}]')
    with pytest.raises(ValueError, match="format v2"):
        decode_example(raw)
    with pytest.raises(msgspec.ValidationError):  # a watermark is not an example: never in a pack
        decode_example(b'{"kind":"examples","items":[{"kind":"watermark","partition":1,"clock_ms":5}]}')
