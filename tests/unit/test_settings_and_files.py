from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.runtime.publish import read_jsonl
from streams.runtime.settings import Settings, embedded_overrides, settings_markdown


def test_production_defaults_are_kafka_defaults_not_the_embedded_broker_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in embedded_overrides("127.0.0.1:1"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.session_timeout_s, settings.heartbeat_interval_s, settings.fetch_max_wait_ms) == (45.0, 3.0, 500)
    assert settings.producer_max_batch_size == 16_384
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    for name, value in embedded_overrides("127.0.0.1:1").items():
        if name != "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.setenv(name, value)
    embedded = Settings()
    assert embedded.bootstrap_servers == "k1:9092,k2:9092"
    assert (embedded.session_timeout_s, embedded.heartbeat_interval_s, embedded.fetch_max_wait_ms) == (2.0, 0.5, 100)
    assert embedded.producer_max_batch_size == 1


def test_the_merge_margin_is_two_fetch_waits_and_100_ms_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETENTION_MERGE_MARGIN_MS", raising=False)
    monkeypatch.setenv("RETENTION_FETCH_MAX_WAIT_MS", "500")
    assert Settings().merge_margin == 1100  # Kafka's default fetch wait
    monkeypatch.setenv("RETENTION_FETCH_MAX_WAIT_MS", "100")
    assert Settings().merge_margin == 300  # the embedded broker's
    monkeypatch.setenv("RETENTION_MERGE_MARGIN_MS", "0")
    assert Settings().merge_margin == 0  # trusted as of the last dry receive (Kafka Streams' max.task.idle.ms=0)
    monkeypatch.setenv("RETENTION_MERGE_MARGIN_MS", "-1")
    with pytest.raises(ValidationError, match="merge_margin_ms"):
        Settings()


def test_topic_names_are_configurable_and_mapped_to_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_TOPIC_CLICKS", "shop.clicks.v1")
    monkeypatch.setenv("RETENTION_APP_ID", "rs-eu")
    settings = Settings()
    assert settings.inbound_topics["shop.clicks.v1"] == "clicks"
    assert settings.rekey_topic == "rs-eu-rekeyed" and "shop.clicks.v1" in settings.all_topics


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RETENTION_HEARTBEAT_INTERVAL_S", "60", "must be below RETENTION_SESSION_TIMEOUT_S"),
        ("RETENTION_CONTROL_SHARE", "0.2", r"RETENTION_CONTROL_SHARE \(now `control_share` in the policy file"),
        ("RETENTION_CHURN_THRESHOLD", "0.6", r"moved to the policy file .*churn_at_least"),
        ("RETENTION_PARTITIONS", "zero", "valid integer"),
        ("RETENTION_LOYALTY_TIERS", "bronze:0,gold:0.8,silver:0.5", "must increase"),
        ("RETENTION_LOYALTY_TIERS", "silver:0.5,gold:0.8", "must start at 0"),
        ("RETENTION_LOYALTY_CURRENT_DAYS", "0", "greater than 0"),
    ],
)
def test_bad_configuration_is_refused_with_the_variable_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_the_policy_file_is_read_from_its_setting_and_an_invalid_one_is_refused_with_its_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from streams.domain.policy_file import DEFAULT_POLICY, PolicyFileError

    assert Settings().policy_path == DEFAULT_POLICY and Settings().engine.policy.control_share == 0.1
    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT_POLICY.read_text().replace("control_share: 0.1", "control_share: 0.25"))
    monkeypatch.setenv("RETENTION_POLICY_FILE", str(path))
    assert Settings().policy.control_share == 0.25 and Settings().engine.policy.control_share == 0.25
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_POLICY.read_text().replace("churn_at_least: 0.5", "churn_at_least: 5"))
    monkeypatch.setenv("RETENTION_POLICY_FILE", str(bad))
    with pytest.raises(PolicyFileError, match=rf"{bad}:\d+: rules\[\d\]\.when\.churn_at_least: must be at most 1, got 5"):
        Settings().policy
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(DEFAULT_POLICY.read_text().replace("loyalty_tiers: [gold, platinum]", "loyalty_tiers: [gold, diamond]"))
    monkeypatch.setenv("RETENTION_POLICY_FILE", str(tiers))
    with pytest.raises(PolicyFileError, match="unknown loyalty tier 'diamond'"):
        Settings().policy


def test_loyalty_settings_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().loyalty.tiers == (("bronze", 0.0), ("silver", 0.5), ("gold", 0.8), ("platinum", 0.95))
    monkeypatch.setenv("RETENTION_LOYALTY_TIERS", "standard:0, vip:0.9")
    monkeypatch.setenv("RETENTION_LOYALTY_CURRENT_DAYS", "180")
    monkeypatch.setenv("RETENTION_LOYALTY_POPULATION_SIZE", "500")
    cfg = Settings().loyalty
    assert (cfg.tiers, cfg.current_days, cfg.capacity) == ((("standard", 0.0), ("vip", 0.9)), 180.0, 500)


def test_settings_table_lists_every_setting_with_its_variable() -> None:
    table = settings_markdown()
    assert "`KAFKA_BOOTSTRAP_SERVERS`" in table and "`RETENTION_CHURN_HORIZON_DAYS` | `30.0`" in table
    assert table.count("\n| `") == len(Settings.model_fields)


def test_jsonl_files_are_validated_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "clicks.jsonl"
    path.write_bytes(
        b'{"event_id":"e1","user_id":"u1","ts":"2026-01-05T13:04:05Z","kind":"search","query":"tent"}\n'
        b"\n"
        b'{"event_id":"e2","user_id":"u2","ts":1767618245120,"kind":"fly"}\n'
        b"not json\r\n"
        b'{"event_id":"e3","user_id":"u3","ts":1767618245120,"kind":"wishlist"}'
    )
    rejected: list[tuple[int, str, bytes]] = []
    valid = list(read_jsonl(path, "clicks", rejected))
    assert [(r.key, r.ts_ms) for r in valid] == [("u1", 1767618245000), ("u3", 1767618245120)]
    assert [(line, raw) for line, _, raw in rejected] == [(3, b'{"event_id":"e2","user_id":"u2","ts":1767618245120,"kind":"fly"}'), (4, b"not json")]
    assert "Invalid enum value 'fly'" in rejected[0][1]


def test_readme_generated_tables_are_current() -> None:
    from streams.readme import synced

    stale = [page.name for page, (text, new) in synced().items() if new != text]
    assert stale == [], f"{stale} stale: run `python -m streams.readme`"


def test_the_snapshot_key_comes_from_its_variable_or_file_and_stays_out_of_reprs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from streams.runtime.settings import MissingSnapshotKey

    for name in ("RETENTION_SNAPSHOT_KEY", "RETENTION_SNAPSHOT_KEY_FILE", "RETENTION_SNAPSHOT_KEYS_PREVIOUS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingSnapshotKey, match=r"set RETENTION_SNAPSHOT_KEY .*secrets.token_hex\(32\)"):
        Settings().snapshot_keys  # noqa: B018 - the property raises
    key, old = "a1" * 32, "b2" * 20
    monkeypatch.setenv("RETENTION_SNAPSHOT_KEY", key)
    monkeypatch.setenv("RETENTION_SNAPSHOT_KEYS_PREVIOUS", f" {old} ,,")
    settings = Settings()
    assert settings.snapshot_keys.sign == key.encode() and settings.snapshot_keys.accept == (key.encode(), old.encode())
    assert key not in repr(settings) and key not in str(settings.model_dump()) and old not in repr(settings)
    monkeypatch.delenv("RETENTION_SNAPSHOT_KEY")
    path = tmp_path / "key"
    path.write_text(f"  {key}\n")
    monkeypatch.setenv("RETENTION_SNAPSHOT_KEY_FILE", str(path))
    assert Settings().snapshot_keys.sign == key.encode()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RETENTION_SNAPSHOT_KEY": "s3cret"}, r"RETENTION_SNAPSHOT_KEY must be at least 32 characters \(it has 6\)"),
        ({"RETENTION_SNAPSHOT_KEY": "k" * 40, "RETENTION_SNAPSHOT_KEYS_PREVIOUS": "o" * 40 + ",short"},
         "every key of RETENTION_SNAPSHOT_KEYS_PREVIOUS must be at least 32"),
        ({"RETENTION_SNAPSHOT_KEY": "k" * 40, "RETENTION_SNAPSHOT_KEY_FILE": "/etc/hostname"}, "not both"),
        ({"RETENTION_SNAPSHOT_KEY_FILE": "/nonexistent/key"}, "RETENTION_SNAPSHOT_KEY_FILE: cannot read the key"),
        ({"RETENTION_SNAPSHOT_KEYS_PREVIOUS": "o" * 40}, "RETENTION_SNAPSHOT_KEY is not"),
    ],
)
def test_a_bad_snapshot_key_is_refused_naming_the_variable_and_not_echoed(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name in ("RETENTION_SNAPSHOT_KEY", "RETENTION_SNAPSHOT_KEY_FILE", "RETENTION_SNAPSHOT_KEYS_PREVIOUS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message) as error:
        Settings()
    secrets = [k for name, value in env.items() if not name.endswith("_FILE") for k in value.split(",")]
    assert not [k for k in secrets if k in str(error.value)]  # (pydantic would print the input: hidden)


def test_a_worker_without_a_snapshot_key_does_not_start_and_says_how_to_make_one() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_SNAPSHOT_KEY")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    run = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == (
        "no model snapshot key: set RETENTION_SNAPSHOT_KEY (or RETENTION_SNAPSHOT_KEY_FILE) to the same secret on every "
        "worker; make one with: python -c 'import secrets; print(secrets.token_hex(32))'"
    )


def test_the_processes_of_a_run_share_a_fresh_key_unless_the_operator_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.runtime.settings import run_snapshot_key

    monkeypatch.delenv("RETENTION_SNAPSHOT_KEY", raising=False)
    monkeypatch.delenv("RETENTION_SNAPSHOT_KEY_FILE", raising=False)
    first, second = embedded_overrides("127.0.0.1:1")["RETENTION_SNAPSHOT_KEY"], run_snapshot_key()["RETENTION_SNAPSHOT_KEY"]
    assert len(first) == 64 and first != second
    monkeypatch.setenv("RETENTION_SNAPSHOT_KEY", "mine" * 10)
    assert run_snapshot_key() == {} and "RETENTION_SNAPSHOT_KEY" not in embedded_overrides("127.0.0.1:1")


def test_model_snapshots_may_be_larger_than_kafkas_default_record_size() -> None:
    """A snapshot holds the trainer's BG/NBD history of every customer (35-70 bytes each in
    the record): Kafka's default 1 MB record would refuse the trainer's publication past
    15,000-30,000 customers.
    The topic we create, the Faust producer and the followers' fetches take the setting."""
    from streams.runtime.app import new_app

    settings = Settings(model_snapshot_max_bytes=32 * 1024 * 1024)
    assert settings.topic_config(settings.topic_model_snapshots) == {"cleanup.policy": "compact", "max.message.bytes": str(32 * 1024 * 1024)}
    app = new_app(settings)
    assert app.conf.producer_max_request_size == 32 * 1024 * 1024
    assert Settings().model_snapshot_max_bytes == 64 * 1024 * 1024
