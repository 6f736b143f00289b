"""Which partition owns a user: the Java client's murmur2 partitioner over the user_id.

All inbound topics are co-partitioned, so a user's state lives on partition
``partition_for(user_id)`` of every topic and of the table changelog. A record that
arrived elsewhere (unkeyed, keyed by something else, or written with another
partitioner such as librdkafka's default CRC32) is re-keyed to that partition first.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


def make_partitioner(partitions: int):  # type: ignore[no-untyped-def]
    @lru_cache(maxsize=262_144)
    def partition_for(user_id: str) -> int:
        return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions

    return partition_for
