"""Worker processes started by the demo, the benchmark and the tests (and stopped by PID)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streams.runtime.broker import free_port
from streams.runtime.web import bearer_headers

#: The API token of the workers this process starts without one of their own: shared, since
#: workers forward requests to each other; random, since nothing outside this process needs it.
LOCAL_API_TOKEN = secrets.token_hex(32)


class WorkerProcess:
    """``retention worker`` in a child process, with its own data dir and web port.

    ``module`` runs another worker module the same way (the bench's naive reference:
    ``streams.runtime.bench_naive``); ``command``: another ``retention`` command
    (``trainer``)."""

    def __init__(
        self, env: dict[str, str], data_dir: Path, log_file: Path, web_port: int | None = None, module: str | None = None,
        command: str = "worker",
    ) -> None:
        self.command = [sys.executable, "-m", module] if module else [sys.executable, "-m", "streams.cli", command]
        self.web_port = web_port or free_port()
        self.data_dir = data_dir
        self.log_file = log_file
        self.env = {
            **os.environ,
            **env,
            "RETENTION_DATA_DIR": str(data_dir),
            "RETENTION_WEB_PORT": str(self.web_port),
            "RETENTION_WEB_HOST": "127.0.0.1",
        }
        if not (self.env.get("RETENTION_API_TOKEN") or self.env.get("RETENTION_API_TOKEN_FILE")):
            self.env["RETENTION_API_TOKEN"] = LOCAL_API_TOKEN
        token_file = self.env.get("RETENTION_API_TOKEN_FILE")
        self.token = Path(token_file).read_text().strip() if token_file else self.env.get("RETENTION_API_TOKEN")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                self.command,
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def death(self) -> str:
        """Why the process ended, for an error message: its exit code and the last lines of
        its log (a CI run keeps no files, so the cause must be in the message itself)."""
        code = self.process and self.process.returncode
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-12:]
        except OSError:
            tail = []
        return f"worker exited with {code}; see {self.log_file}; its log ended with:\n" + "\n".join(line[:400] for line in tail)

    def metrics_text(self, *names: str) -> str:
        """The /metrics page; with ``names``, only those series (the worker renders less)."""
        query = "?" + urllib.parse.urlencode([("name[]", name) for name in names]) if names else ""
        # A worker busy on a loaded machine can take seconds to answer (seen: > 2 s under a
        # load average of 8 on 2 cores, which failed the recovery tests' polling).
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics{query}", timeout=10) as response:
            return response.read().decode()

    def get_json(self, path: str) -> tuple[int, Any]:
        """GET a JSON page of the worker's web server with its token: (status, decoded body)."""
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", headers=bearer_headers(self.token))
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def samples(self, *names: str) -> list[tuple[dict[str, str], float]]:
        """Samples of the metrics named (e.g. ``retention_records_total``) as (labels, value),
        from one read of the page."""
        return [(labels, value) for _, labels, value in self.named_samples(*names)]

    def named_samples(self, *names: str) -> list[tuple[str, dict[str, str], float]]:
        """:meth:`samples` with each sample's name, for a read of several series."""
        out = []
        for family in text_string_to_metric_families(self.metrics_text(*names)):
            out += [(s.name, s.labels, s.value) for s in family.samples if s.name in names]
        return out

    def total(self, name: str, **labels: str) -> float:
        try:
            return sum(v for lab, v in self.samples(name) if all(lab.get(k) == x for k, x in labels.items()))
        except OSError:
            return 0.0

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the web server answers (the agent starts once partitions are assigned)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(self.death())
            try:
                self.metrics_text()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"worker web server not up within {timeout:.0f} s; see {self.log_file}")

    def wait_processed(self, count: int, timeout: float = 120.0) -> float:
        """Until the worker has handled ``count`` inbound records (not counting re-keys)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                done = sum(v for lab, v in self.samples("retention_records_total") if lab["result"] != "rekeyed")
            except OSError:
                if self.alive:
                    raise
                raise RuntimeError(self.death()) from None
            if done >= count:
                return done
            if not self.alive:
                raise RuntimeError(self.death())
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker processed {done:.0f} of {count} records in {timeout:.0f} s; see {self.log_file}")
            time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the worker's process group; SIGKILL if it does not end in ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()
