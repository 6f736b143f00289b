"""The records of the internal ``model-labels`` topic: learning examples and watermarks.

The scorers (ingest partitions) do not learn; they send what the models should learn to
one trainer (:mod:`models.trainer`). Every example carries an ``id`` (a re-sent copy has the
same one, so the trainer learns it once) and ``at``, the event time at which the sending
partition's clock made it known (never earlier than a watermark the partition already
sent, so a partition's watermark closes the periods of its examples). A
:class:`Watermark` says "partition ``partition`` has sent every example with ``at`` below
``clock_ms``".

An internal format (msgspec JSON, tagged by ``kind``, versioned by ``v``), not a topic
contract; ``docs/models.md`` describes it.

>>> raw = encode_example(ReviewExample(id="d1", at=5, text="great", rating=5))
>>> decode_example(raw)
ReviewExample(id='d1', at=5, text='great', rating=5, v=1)
>>> decode_example(encode_example(Watermark(partition=3, clock_ms=86_400_000))).clock_ms
86400000
"""

from __future__ import annotations

from typing import Union

import msgspec

#: The format version written in every record's ``v``.
VERSION = 1


class ChurnExample(msgspec.Struct, tag_field="kind", tag="churn", frozen=True):
    """A scoring point's matured churn and/or loyalty label (``streams.domain.labels.Matured``)."""

    id: str  #: user id, scoring time and which label: ``user@scored_at/c`` or ``/d``
    at: int  #: the event time the label matured
    features: list[float]
    churned: int | None
    days: int | None
    churn_p: float | None = None
    loyalty_p: float | None = None
    v: int = VERSION
    #: The learners' two candidates at the scoring time (prior, River pipeline), which the
    #: trainer's gates compare on the label (``streams.domain.labels.Matured``).
    churn_prior_p: float | None = None
    churn_learned_p: float | None = None
    loyalty_prior_p: float | None = None
    loyalty_learned_p: float | None = None


class ReviewExample(msgspec.Struct, tag_field="kind", tag="review", frozen=True):
    """A review text and its star rating, the sentiment model's weak label."""

    id: str  #: the review event's digest
    at: int
    text: str
    rating: int
    v: int = VERSION


class SegmentExample(msgspec.Struct, tag_field="kind", tag="segment", frozen=True):
    """The model inputs of a published user-score row, learned by the segment model."""

    id: str  #: user id and the row's event time
    at: int
    x: dict[str, float]
    v: int = VERSION


class BanditExample(msgspec.Struct, tag_field="kind", tag="bandit", frozen=True):
    """A matured treated decision chosen by a bandit (:mod:`models.bandit`): the context the
    bandit saw, the arm (rule) it chose and the reward the attribution window gave it."""

    id: str  #: the decision's action id
    at: int  #: the event time the decision matured
    bandit: str  #: ``trigger/action``
    arm: str
    context: dict[str, float]
    reward: float
    v: int = VERSION
    #: The customer (optional, appended: older records load): an erased customer's example not learned yet is dropped.
    user: str | None = None


class UpliftExample(msgspec.Struct, tag_field="kind", tag="uplift", frozen=True):
    """A matured decision of a kind whose uplift is learned (:mod:`models.uplift`), treatment
    or control: the churn model's inputs at the decision, its group, and whether the
    customer bought within the attribution window; ``explored``: the policy decided it at
    random (a draw from the rule's candidates)."""

    id: str  #: the decision's action id
    at: int  #: the event time the decision matured
    action: str  #: the action kind
    rule: str
    group: str
    features: list[float]
    converted: bool
    explored: bool = False
    v: int = VERSION
    #: The customer (optional, appended: older records load): an erased customer's example not learned yet is dropped.
    user: str | None = None


class Watermark(msgspec.Struct, tag_field="kind", tag="watermark", frozen=True):
    """Partition ``partition`` has sent every example with ``at`` < ``clock_ms``."""

    partition: int
    clock_ms: int
    v: int = VERSION


class Forget(msgspec.Struct, tag_field="kind", tag="forget", frozen=True):
    """The customer ``user`` was erased: the trainer drops their examples not learned yet and
    their BG/NBD history (the models' weights are aggregates and stay)."""

    user: str
    v: int = VERSION


Example = Union[ChurnExample, ReviewExample, SegmentExample, BanditExample, UpliftExample]


class Examples(msgspec.Struct, tag_field="kind", tag="examples", frozen=True):
    """Several examples in one record, in the order they were made: a worker packs what it
    makes in a micro-batch (``RETENTION_MODEL_LABELS_PACK``), so the trainer reads one record,
    not one per example. Acknowledged once every example in it is in a learned period. Each
    item is an encoded example of its own (:func:`pack`, :func:`unpack`), so that one this
    reader cannot read (a newer kind or version) costs only itself."""

    items: list[msgspec.Raw]
    v: int = VERSION


LabelRecord = Union[ChurnExample, ReviewExample, SegmentExample, BanditExample, UpliftExample, Watermark, Forget, Examples]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LabelRecord)
_example = msgspec.json.Decoder(Example)


def encode_example(record: LabelRecord) -> bytes:
    return _encoder.encode(record)


def decode_example(raw: bytes) -> LabelRecord:
    """Raises ``msgspec.DecodeError``/``ValidationError`` for bytes not in this format, and
    ValueError for a newer format version than this code reads."""
    record = _decoder.decode(raw)
    if record.v > VERSION:
        raise ValueError(f"model-labels record of format v{record.v}; this worker reads up to v{VERSION}")
    return record


def pack(examples: list[Example]) -> Examples:
    return Examples(items=[msgspec.Raw(_encoder.encode(e)) for e in examples])


def unpack(record: Examples) -> tuple[list[Example], list[str]]:
    """A pack's examples this code reads, and why each other item was skipped.

    >>> raw = encode_example(pack([ReviewExample(id="a", at=1, text="ok", rating=4)])).replace(b"]", b',{"kind":"novel","id":"z"}]')
    >>> examples, skipped = unpack(decode_example(raw))
    >>> [e.id for e in examples], len(skipped)
    (['a'], 1)
    """
    examples: list[Example] = []
    skipped: list[str] = []
    for item in record.items:
        try:
            example = _example.decode(item)
            if example.v > VERSION:
                raise ValueError(f"an example of format v{example.v}; this worker reads up to v{VERSION}")
            examples.append(example)
        except (msgspec.DecodeError, ValueError) as exc:
            skipped.append(str(exc))
    return examples, skipped


def examples_in(record: LabelRecord) -> list[LabelRecord]:
    """The records a model-labels record stands for: a pack's examples (those this code
    reads), else the record itself.

    >>> p = pack([ReviewExample(id="a", at=1, text="ok", rating=4), ReviewExample(id="b", at=2, text="", rating=1)])
    >>> [e.id for e in examples_in(decode_example(encode_example(p)))]
    ['a', 'b']
    >>> examples_in(Forget(user="ann"))
    [Forget(user='ann', v=1)]
    """
    return list(unpack(record)[0]) if isinstance(record, Examples) else [record]


def churn_example_id(user_id: str, scored_at: int, days: int | None) -> str:
    """``user@scored_at/c`` for a churn label resolved early, ``/d`` at the horizon's end."""
    return f"{user_id}@{scored_at}/{'c' if days is None else 'd'}"


def churn_examples(user_id: str, matured: list, at: int) -> list[ChurnExample]:
    """The ``Matured`` labels of a step (:mod:`streams.domain.labels`) as examples made at ``at``."""
    return [  # plain ints and floats: msgspec encodes no subclasses (EventTime, Rating)
        ChurnExample(
            id=churn_example_id(user_id, m.ts, m.days), at=int(at), features=[float(f) for f in m.features],
            churned=None if m.churned is None else int(m.churned), days=None if m.days is None else int(m.days),
            churn_p=None if m.churn_p is None else float(m.churn_p),
            loyalty_p=None if m.loyalty_p is None else float(m.loyalty_p),
            churn_prior_p=_float(m.churn_prior_p), churn_learned_p=_float(m.churn_learned_p),
            loyalty_prior_p=_float(m.loyalty_prior_p), loyalty_learned_p=_float(m.loyalty_learned_p),
        )
        for m in matured
    ]


def bandit_examples(matured: list, at: int, user: str | None = None) -> list[BanditExample]:
    """The rewards of a step's matured bandit decisions (``streams.domain.engine.Reward``) as
    examples made at ``at`` (``user``: the customer, so an erasure can drop them unlearned)."""
    return [
        BanditExample(id=r.action_id, at=int(at), bandit=r.bandit, arm=r.arm, context={k: float(v) for k, v in r.context.items()},
                      reward=float(r.reward), user=user)
        for r in matured
    ]


def uplift_examples(matured: list, at: int, user: str | None = None) -> list[UpliftExample]:
    """The outcomes of a step's matured decisions whose uplift is learned
    (``streams.domain.engine.UpliftOutcome``) as examples made at ``at`` (``user``: as above)."""
    return [
        UpliftExample(id=o.action_id, at=int(at), action=o.kind, rule=o.rule, group=o.group,
                      features=[float(f) for f in o.features], converted=bool(o.converted), explored=bool(o.explored), user=user)
        for o in matured
    ]


def _float(v: float | None) -> float | None:
    return None if v is None else float(v)


def candidates_of(example: ChurnExample) -> tuple[float | None, float | None, float | None, float | None]:
    """The churn and the loyalty learner's (prior, pipeline) predictions stored at the scoring time."""
    return example.churn_prior_p, example.churn_learned_p, example.loyalty_prior_p, example.loyalty_learned_p
