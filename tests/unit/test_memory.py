"""The start-up check of the state cache against the container's memory limit."""

from __future__ import annotations

from pathlib import Path

from streams.runtime.memory import (
    BASE_BYTES, MB, STATE_BYTES, cache_warning, cgroup_limit, heap_trimmer, rocksdb_bytes, states_that_fit,
)
from streams.runtime.settings import Settings


def test_the_limit_is_read_from_cgroup_v2_then_v1_and_none_means_unlimited(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "limit_in_bytes"
    assert cgroup_limit((v2, v1)) is None  # neither file: not in a limited container
    v1.write_text(f"{1 << 30}\n")
    assert cgroup_limit((v2, v1)) == 1 << 30
    v2.write_text("max\n")
    assert cgroup_limit((v2, v1)) is None  # v2 first: unlimited
    v2.write_text(str(2 << 30))
    assert cgroup_limit((v2, v1)) == 2 << 30
    v2.unlink()
    v1.write_text(str(9223372036854771712))  # v1's "no limit"
    assert cgroup_limit((v2, v1)) is None


def test_the_default_cache_does_not_fit_a_gibibyte_and_the_warning_names_what_does() -> None:
    settings = Settings(partitions=8, state_cache_users=100_000, rocksdb_block_cache_mb=16, rocksdb_write_buffer_mb=16,
                        rocksdb_memtables_mb=0)
    fits = states_that_fit(settings, 1 << 30)
    assert fits == ((1 << 30) - BASE_BYTES - 8 * 48 * MB) // (8 * STATE_BYTES) == 1_966
    message = cache_warning(settings, 1 << 30)
    assert message is not None and "set it to 1,966 or less" in message and "all 8 partitions" in message
    assert cache_warning(settings.model_copy(update={"state_cache_users": fits}), 1 << 30) is None
    assert cache_warning(settings, None) is None  # no limit: nothing to say


def test_a_shared_memtable_budget_counts_once_for_the_worker_when_it_is_the_smaller() -> None:
    settings = Settings(partitions=8, rocksdb_block_cache_mb=16, rocksdb_write_buffer_mb=16, rocksdb_memtables_mb=64)
    assert rocksdb_bytes(settings) == (8 * 16 + 64) * MB  # not 8 x 2 x 16 MB of memtables
    assert states_that_fit(settings, 1 << 30) == ((1 << 30) - BASE_BYTES - 192 * MB) // (8 * STATE_BYTES) == 3_538
    assert rocksdb_bytes(settings.model_copy(update={"rocksdb_memtables_mb": 1024})) == 8 * (16 + 32) * MB  # the stores' own bound is smaller
    assert rocksdb_bytes(settings.model_copy(update={"rocksdb_memtables_mb": 0})) == 8 * (16 + 32) * MB


def test_the_shipped_kubernetes_worker_fits_its_own_limit() -> None:
    """deploy/k8s: the ConfigMap's cache size fits the StatefulSet's memory limit."""
    import yaml

    root = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
    config = yaml.safe_load((root / "configmap.yaml").read_text())["data"]
    sts = yaml.safe_load((root / "statefulset.yaml").read_text())
    [container] = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    settings = Settings(partitions=int(config["RETENTION_PARTITIONS"]), state_cache_users=int(config["RETENTION_STATE_CACHE_USERS"]))
    assert cache_warning(settings, int(limit[:-2]) << 30) is None


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_the_heap_trimmer_gives_back_what_glibc_kept_after_a_free() -> None:
    """40 MB of 2 KB blocks (C heap, not pymalloc) freed behind one kept block: glibc keeps
    them resident until the trim."""
    trim = heap_trimmer()
    assert trim is not None  # this project's images and CI run glibc
    blocks = [bytes(2048) for _ in range(20_000)]
    kept = blocks[-1]
    del blocks
    before = _rss_anon_kb()
    assert trim() is True
    assert before - _rss_anon_kb() > 20_000  # KB
    assert len(kept) == 2048
