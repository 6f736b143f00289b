"""The private Faust names our code overrides or reads (streams/runtime/transport.py, app.py)
have the signatures and attributes they were written against: an upgrade of faust-streaming
that changes one fails here, not as a lost record after a kill -9."""

from __future__ import annotations

import inspect

import faust
import pytest
from faust.transport.drivers import aiokafka as driver
from faust.transport.producer import ProducerBuffer

#: (class, method) -> its parameters, as faust-streaming 0.15 defines them
OVERRIDDEN = {
    (driver.AIOKafkaConsumerThread, "_create_worker_consumer"): ["self", "transport"],
    (driver.Consumer, "resume_flow"): ["self"],
    (driver.Consumer, "getmany"): ["self", "timeout"],
    (driver.Consumer, "_new_consumer_thread"): ["self"],
    (driver.Consumer, "_to_message"): ["self", "tp", "record"],
    (driver.Consumer, "ack"): ["self", "message"],
    (driver.Consumer, "_add_gap"): ["self", "tp", "offset_from", "offset_to"],
    (driver.Consumer, "perform_seek"): ["self"],
    (driver.Consumer, "_commit_offsets"): ["self", "offsets", "start_new_transaction"],
    (driver.Consumer, "on_partitions_revoked"): ["self", "revoked"],
    (driver.Consumer, "_new_offset"): ["self", "tp"],
    (driver.Consumer, "_filter_committable_offsets"): ["self", "tps"],
    (ProducerBuffer, "put"): ["self", "fut"],
    (ProducerBuffer, "_send_pending"): ["self", "fut"],
    (driver.Producer, "flush"): ["self"],
    (faust.App, "_crash"): ["self", "reason"],
    (faust.App, "_new_transport"): ["self"],
    (faust.App, "_new_web"): ["self"],
}

#: attributes of Faust's consumer that transport.py reads or changes
CONSUMER_ATTRIBUTES = ["_committed_offset", "_read_offset", "_acked", "_acked_index", "_unacked_messages", "_gap", "_thread"]


@pytest.mark.parametrize(("cls", "name"), list(OVERRIDDEN), ids=[f"{c.__name__}.{n}" for c, n in OVERRIDDEN])
def test_an_overridden_private_method_keeps_its_signature(cls: type, name: str) -> None:
    method = getattr(cls, name, None)
    assert method is not None, f"{cls.__module__}.{cls.__qualname__}.{name} is gone: see streams/runtime/transport.py"
    assert list(inspect.signature(method).parameters) == OVERRIDDEN[(cls, name)]


def test_the_consumer_attributes_transport_reads_are_set_by_faust() -> None:
    from faust.transport import consumer as base

    source = inspect.getsource(base)
    missing = [name for name in CONSUMER_ATTRIBUTES if f"self.{name}" not in source and f"self.{name}:" not in source]
    assert missing == [], f"faust.transport.consumer.Consumer no longer sets {missing}: see streams/runtime/transport.py"
