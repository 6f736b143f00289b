"""Whether the state cache can outgrow the container's memory limit, said once at start.

A worker's memory is set by what it keeps per partition it owns (docs/scaling.md, "Memory"):
at most ``RETENTION_STATE_CACHE_USERS`` decoded states (~15 KB each for an active customer,
measured by ``scripts/measure-state``: docs/state-size.md) plus RocksDB's block cache per
partition and the memtables (``RETENTION_ROCKSDB_MEMTABLES_MB`` for all of a worker's
partitions together). A worker left alone owns every partition, so the worst case is all of
them. When that does not fit the cgroup's limit the worker would be OOM-killed under a large
enough shop; the warning names the cache size that fits.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from pathlib import Path

from streams.runtime.settings import Settings

log = logging.getLogger(__name__)

#: Python memory of one decoded state of an active customer (docs/state-size.md: 1,525 MiB per 100,000).
STATE_BYTES = 16_000
#: What a worker holds besides its partitions' stores: interpreter, Faust, models, buffers (the
#: benches' workers: 300-400 MB RSS with small caches).
BASE_BYTES = 400 << 20
MB = 1 << 20
_CGROUP_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def cgroup_limit(files: tuple[Path, ...] = _CGROUP_FILES) -> int | None:
    """The container's memory limit in bytes (cgroup v2, then v1); None without one."""
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= 1 << 60:  # v1 says "no limit" with a huge number
            return None
        return int(text)
    return None


def rocksdb_bytes(settings: Settings) -> int:
    """RocksDB's memory on a worker owning every partition: a block cache per store, and the
    memtables (two per store at most, or the worker's shared budget when it is smaller)."""
    memtables = settings.partitions * 2 * settings.rocksdb_write_buffer_mb
    if settings.rocksdb_memtables_mb:
        memtables = min(memtables, settings.rocksdb_memtables_mb)
    return (settings.partitions * settings.rocksdb_block_cache_mb + memtables) * MB


def states_that_fit(settings: Settings, limit: int) -> int:
    """The most cached states per partition that keep a worker owning every partition within ``limit``."""
    return max(0, (limit - BASE_BYTES - rocksdb_bytes(settings)) // (settings.partitions * STATE_BYTES))


def cache_warning(settings: Settings, limit: int | None) -> str | None:
    """One line for the operator when the cache's worst case exceeds the limit, else None."""
    if limit is None:
        return None
    fits = states_that_fit(settings, limit)
    if settings.state_cache_users <= fits:
        return None
    worst = BASE_BYTES + settings.partitions * settings.state_cache_users * STATE_BYTES + rocksdb_bytes(settings)
    return (f"RETENTION_STATE_CACHE_USERS={settings.state_cache_users} per partition can take ~{worst / MB:,.0f} MB on a "
            f"worker owning all {settings.partitions} partitions, above this container's {limit / MB:,.0f} MB limit: "
            f"set it to {fits:,} or less, or raise the limit (a smaller cache costs RocksDB reads, not correctness; "
            "docs/scaling.md, Memory)")


def warn_if_cache_outgrows_limit(settings: Settings) -> None:
    message = cache_warning(settings, cgroup_limit())
    if message is not None:
        log.warning(message)


def heap_trimmer() -> Callable[[], bool] | None:
    """glibc's ``malloc_trim(0)``: gives the system back the free memory of the C heap (True
    when some was), or None where the C library has no such call (musl, macOS).

    glibc keeps what is freed for the next allocation, so without it a worker's RSS stays at
    its heap's high-water mark: the memtables RocksDB flushed, the records fetched ahead and
    folded (docs/benchmarks.md, ninth round: 20-85 MB of a bench worker's RSS).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: bool(trim(0))
