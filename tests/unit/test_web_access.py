"""Access to a worker's HTTP server, tested on the real app's aiohttp application (no broker):
which pages are open, the bearer token, no token at all, Faust's own views, bounds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from streams.runtime.app import create_app
from streams.runtime.settings import Settings
from streams.runtime.web import MAX_REQUEST_BYTES

TOKEN = "t0ken-" + "x" * 26
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PRIVATE = ["/models", "/actions/stats", "/actions/stats?scope=local", "/users/u1"]
FAUST_VIEWS = ["/", "/router/", "/router/users/", "/table/", "/table/users/", "/table/users/u1/", "/graph/", "/stats/",
               "/assignment/", "/performance/", "/signal/"]


def answers(settings: Settings, requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, dict[str, Any], str]]:
    """(status, headers, body) of each GET, served by the worker's own aiohttp application."""

    async def run() -> list[tuple[int, dict[str, Any], str]]:
        app, _ = create_app(settings)
        app.web.init_server()
        out = []
        async with TestClient(TestServer(app.web.web_app)) as client:
            for path, headers in requests:
                async with client.get(path, headers=headers) as response:
                    out.append((response.status, dict(response.headers), await response.text()))
        return out

    return asyncio.run(run())


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("RETENTION_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RETENTION_SNAPSHOT_KEY", "k" * 64)  # (a worker needs its model snapshot key)
    monkeypatch.delenv("RETENTION_API_TOKEN", raising=False)
    monkeypatch.delenv("RETENTION_API_TOKEN_FILE", raising=False)
    yield monkeypatch


def test_we_serve_exactly_our_pages() -> None:
    async def paths() -> set[str]:
        app, _ = create_app(Settings(data_dir=Path("/nonexistent"), snapshot_key="k" * 64))
        app.web.init_server()
        return {resource.canonical for resource in app.web.web_app.router.resources()}

    assert asyncio.run(paths()) == {"/metrics", "/health/live", "/health/ready", "/models", "/actions/stats", "/users/{user_id}"}


def test_private_pages_need_the_bearer_token_and_open_ones_do_not(env: pytest.MonkeyPatch) -> None:
    env.setenv("RETENTION_API_TOKEN", TOKEN)
    wrong = {"Authorization": "Bearer " + "y" * 32}
    got = answers(Settings(), [(p, {}) for p in PRIVATE] + [(p, wrong) for p in PRIVATE] + [("/models", AUTH), ("/models", {"Authorization": f"Basic {TOKEN}"}),
                  ("/metrics", {}), ("/health/live", {}), ("/nothing-here", {}), ("/nothing-here", AUTH)])
    for status, headers, body in got[:len(PRIVATE)]:
        assert (status, headers["WWW-Authenticate"], body) == (401, 'Bearer realm="retention-streams"', '{"error": "a bearer token is required"}')
    for status, headers, _ in got[len(PRIVATE):2 * len(PRIVATE)]:
        assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="retention-streams", error="invalid_token"')
    models, basic, metrics, live, unknown, unknown_authorized = got[2 * len(PRIVATE):]
    assert models[0] == 200 and '"snapshot"' in models[2]
    assert basic[0] == 401
    assert metrics[0] == 200 and "retention_http_refused_total" in metrics[2]
    assert live[0] == 200 and json.loads(live[2]) == {"live": True}
    assert (unknown[0], unknown_authorized[0]) == (401, 404)  # what we serve is not told to strangers


def test_without_a_token_private_pages_are_refused_to_everyone(env: pytest.MonkeyPatch) -> None:
    got = answers(Settings(), [(p, AUTH) for p in PRIVATE] + [("/metrics", {}), ("/health/live", {})])
    assert [(status, body) for status, _, body in got[:len(PRIVATE)]] == [
        (403, '{"error": "the API is disabled: the worker has no RETENTION_API_TOKEN"}')] * len(PRIVATE)
    assert [status for status, _, _ in got[len(PRIVATE):]] == [200, 200]


def test_faust_built_in_views_are_not_served(env: pytest.MonkeyPatch) -> None:
    env.setenv("RETENTION_API_TOKEN", TOKEN)
    assert [status for status, _, _ in answers(Settings(), [(p, AUTH) for p in FAUST_VIEWS])] == [404] * len(FAUST_VIEWS)


def test_user_ids_beyond_the_contract_and_big_bodies_are_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("RETENTION_API_TOKEN", TOKEN)
    got = answers(Settings(), [("/users/" + "u" * 129, AUTH), ("/metrics", {"Content-Length": str(MAX_REQUEST_BYTES + 1)})])
    assert got[0][0] == 400 and json.loads(got[0][2]) == {"error": "user_id must have 1 to 128 characters"}
    assert got[1][0] == 413


def test_the_token_comes_from_a_file_and_must_be_long(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    env.setenv("RETENTION_API_TOKEN_FILE", str(path))
    assert Settings().bearer_token == TOKEN
    assert answers(Settings(), [("/models", AUTH)])[0][0] == 200
    env.setenv("RETENTION_API_TOKEN", TOKEN)
    with pytest.raises(ValidationError, match="set RETENTION_API_TOKEN or RETENTION_API_TOKEN_FILE, not both"):
        Settings()
    env.delenv("RETENTION_API_TOKEN")
    path.write_text("short")
    with pytest.raises(ValidationError, match="RETENTION_API_TOKEN_FILE: the token must have at least 16 characters"):
        Settings()
    env.setenv("RETENTION_API_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="RETENTION_API_TOKEN_FILE: cannot read"):
        Settings()
    env.delenv("RETENTION_API_TOKEN_FILE")
    env.setenv("RETENTION_API_TOKEN", "short-secret")
    with pytest.raises(ValidationError, match="RETENTION_API_TOKEN: the token must have") as error:
        Settings()
    assert "short-secret" not in str(error.value)
