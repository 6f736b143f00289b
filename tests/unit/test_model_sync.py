"""The worker's side of the labels topic (streams.runtime.model_sync.ModelLink): watermarks
at period boundaries, example dates never before a watermark, and the outbox of labels not
yet confirmed delivered that a state carries (sent again after a restart)."""

from __future__ import annotations

import asyncio
from typing import Any

from models.examples import ReviewExample, Watermark, decode_example
from streams.runtime.model_sync import ModelLink
from streams.runtime.settings import Settings

DAY = 86_400_000


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, asyncio.Future[Any]]] = []

    async def send(self, value: bytes, partition: int) -> asyncio.Future[Any]:
        assert partition == 0
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((value, future))
        return future


class FakeApp:
    def __init__(self) -> None:
        self.labels = FakeTopic()

    def topic(self, *args: Any, **kwargs: Any) -> FakeTopic:
        return self.labels


class FakeFollower:
    store = None


def link() -> tuple[ModelLink, FakeTopic]:
    app = FakeApp()
    return ModelLink(app, Settings(), FakeFollower()), app.labels  # type: ignore[arg-type]


def test_a_watermark_at_each_period_a_partition_enters_and_examples_dated_no_earlier() -> None:
    async def run() -> list[Any]:
        models, topic = link()
        for t in (DAY + 5, DAY + 9, 2 * DAY, 2 * DAY + 1, 4 * DAY):
            await models.watermark(1, t)
        await models.watermark(2, 3 * DAY)  # vouched for while idle
        assert models.at(2, DAY) == 3 * DAY and models.at(1, 5 * DAY) == 5 * DAY
        return [decode_example(raw) for raw, _ in topic.sent]

    assert asyncio.run(run()) == [Watermark(1, DAY + 5), Watermark(1, 2 * DAY), Watermark(1, 4 * DAY), Watermark(2, 3 * DAY)]


def test_labels_stay_in_the_outbox_until_delivered_and_are_sent_again_after_a_restart() -> None:
    async def run() -> None:
        models, topic = link()
        a, b = ReviewExample(id="a", at=1, text="x", rating=5), ReviewExample(id="b", at=2, text="y", rating=1)
        await models.send("u", a)
        await models.send("u", b)
        assert len(models.outbox("u")) == 2  # written with the state: nothing confirmed yet
        topic.sent[0][1].set_result(None)
        assert [decode_example(r) for r in models.outbox("u")] == [b]
        topic.sent[1][1].set_result(None)
        assert models.outbox("u") == [] and "u" not in models.unconfirmed
        # a restarted worker finds an outbox in the table: sent again, and kept until confirmed
        restarted, again = link()
        restarted.resend.append(("v", [topic.sent[1][0]]))
        await restarted.send_outboxes()
        assert [decode_example(r) for r, _ in again.sent] == [b] and len(restarted.outbox("v")) == 1

    asyncio.run(run())
