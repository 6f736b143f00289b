"""A real worker's web server: it listens on RETENTION_WEB_HOST only, and its API needs the token."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration


def listening(pid: int) -> set[str]:
    """Local addresses (host:port) of the TCP sockets process ``pid`` listens on."""
    lines = subprocess.run(["ss", "-ltnpH"], check=True, capture_output=True, text=True).stdout.splitlines()
    return {line.split()[3] for line in lines if re.search(rf"pid={pid},", line)}


def other_local_addresses() -> list[str]:
    """Addresses of this machine other than 127.0.0.1: another loopback one, and the
    non-loopback IPv4 addresses of its interfaces."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    return ["127.0.0.2", *(a for a in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out) if not a.startswith("127."))]


def status(port: int, path: str, token: str | None = None) -> tuple[int, str | None]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("WWW-Authenticate")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("WWW-Authenticate")


def test_a_worker_bound_to_loopback_listens_there_only_and_guards_its_api(pipeline: Pipeline) -> None:
    worker = pipeline.worker()
    worker.wait_ready()
    assert worker.process is not None
    deadline = time.monotonic() + 60
    while status(worker.web_port, "/health/ready")[0] != 200:  # owns partitions: /users/{id} can be routed
        assert time.monotonic() < deadline, f"worker not ready; see {worker.log_file}"
        time.sleep(0.25)
    assert listening(worker.process.pid) == {f"127.0.0.1:{worker.web_port}"}
    for address in other_local_addresses():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, worker.web_port), timeout=5).close()
    assert status(worker.web_port, "/users/nobody") == (401, 'Bearer realm="retention-streams"')
    assert status(worker.web_port, "/users/nobody", "not-the-token-at-all")[0] == 401
    assert status(worker.web_port, "/users/nobody", worker.token) == (404, None)
    assert status(worker.web_port, "/table/users/nobody/", worker.token)[0] == 404
    assert status(worker.web_port, "/health/live") == (200, None)
    assert status(worker.web_port, "/metrics")[0] == 200
