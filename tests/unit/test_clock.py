"""The event-time merge of a partition's inputs: the same release order however they interleave."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.domain.clock import InputMerge, PartitionClock, caught_up

INPUTS = ["clicks", "purchases", "rekeyed", "heartbeats"]

# per input: event times in the order of its partition (non-decreasing, as producers write them)
streams_ = st.fixed_dictionaries(
    {topic: st.lists(st.integers(0, 50), max_size=12).map(sorted) for topic in INPUTS}
)


def run(records: dict[str, list[int]], arrival: list[str]) -> list[tuple[int, str, int]]:
    """Push the records in the given arrival order (a choice of input at each step) and
    release whatever the merge allows after each push; an input is caught up once all its
    records have arrived (what a fresh high watermark says)."""
    merge: InputMerge[tuple[int, str, int]] = InputMerge(INPUTS)
    pushed = dict.fromkeys(INPUTS, 0)
    out: list[tuple[int, str, int]] = []

    def done(topic: str, since_ms: int) -> bool:
        return pushed[topic] == len(records[topic])

    def drain() -> None:
        while (item := merge.pop(done)) is not None:
            out.append(item)

    for topic in arrival:
        if pushed[topic] < len(records[topic]):
            ts = records[topic][pushed[topic]]
            merge.push(topic, ts, (ts, topic, pushed[topic]), arrived_ms=0)
            pushed[topic] += 1
            drain()
    for topic in INPUTS:  # the rest, input by input
        while pushed[topic] < len(records[topic]):
            ts = records[topic][pushed[topic]]
            merge.push(topic, ts, (ts, topic, pushed[topic]), arrived_ms=0)
            pushed[topic] += 1
            drain()
    drain()
    return out


@given(streams_, st.lists(st.sampled_from(INPUTS), max_size=60), st.lists(st.sampled_from(INPUTS), max_size=60))
def test_release_order_does_not_depend_on_how_inputs_interleave(records, arrival_a, arrival_b) -> None:
    a, b = run(records, arrival_a), run(records, arrival_b)
    assert a == b
    assert len(a) == sum(len(v) for v in records.values())  # nothing is left behind
    expected = sorted(a, key=lambda r: (r[0], INPUTS.index(r[1]), r[2]))
    assert a == expected  # event-time order; ties by input, heartbeats last


def test_an_input_that_is_not_caught_up_holds_the_others_back() -> None:
    merge: InputMerge[str] = InputMerge(["clicks", "purchases", "heartbeats"])
    merge.push("heartbeats", 100, "hb100", arrived_ms=10)
    merge.push("clicks", 90, "c90", arrived_ms=10)
    assert merge.pop(lambda topic, since: False) is None  # purchases may hold something before 90
    assert merge.pop(lambda topic, since: topic == "purchases") == "c90"
    merge.push("purchases", 95, "p95", arrived_ms=11)
    assert merge.pop(lambda topic, since: False) is None  # clicks may still have a 92
    assert merge.pop(lambda topic, since: topic == "clicks") == "p95"
    assert merge.pop(lambda topic, since: topic != "heartbeats") == "hb100"


def test_records_without_event_time_go_at_once_and_the_clock_never_goes_back() -> None:
    merge: InputMerge[str] = InputMerge(["clicks", "purchases"])
    merge.push("clicks", None, "garbage", arrived_ms=0)
    assert merge.pop(lambda topic, since: False) == "garbage"
    clock = PartitionClock()
    assert [clock.advance(t) for t in (5, None, 3, 8)] == [5, 5, 5, 8]


def test_caught_up_needs_a_fetch_after_the_waiting_record_arrived() -> None:
    assert caught_up(next_offset=0, highwater=0, fetched_ms=2, since_ms=1)  # an empty topic
    assert not caught_up(next_offset=0, highwater=0, fetched_ms=1, since_ms=1)  # same ms: not provably later
    assert not caught_up(next_offset=None, highwater=0, fetched_ms=2, since_ms=1)  # position unknown
    assert not caught_up(next_offset=3, highwater=None, fetched_ms=None, since_ms=1)  # never fetched
