"""Static checks of the deployment files: docker-compose.yml, deploy/Dockerfile,
.dockerignore and deploy/prometheus/prometheus.yml.

No Docker engine is needed. The compose file is rendered with the real Compose
CLI (``docker-compose config`` or ``docker compose config``) so that anchors,
merge keys and defaults are resolved exactly as Compose resolves them, and the
Prometheus config is checked with ``promtool check config``.

Required tools (Debian packages): ``docker-compose`` and ``prometheus`` (which
provides ``promtool``). These tests fail, never skip, when a tool is missing.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

try:  # PyYAML is a dev dependency; a JSON fallback exists for Compose v2.
    import yaml
except ImportError:  # pragma: no cover - depends on the environment
    yaml = None

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

APP_IMAGE = "retention-streams:local"
DATA_DIR = "/var/lib/retention"
WORKERS = {"worker-1": 6066, "worker-2": 6067}  # service -> published host port
WEB_PORT = 6066
EXPECTED_SERVICES = {"kafka", "topics", "worker-1", "worker-2", "simulator", "prometheus"}

INSTALL_HINT = "install it with: apt-get update && apt-get install -y {pkg}"
TIMEOUT = 120


# --------------------------------------------------------------------------- helpers


@lru_cache(maxsize=1)
def compose_command() -> tuple[str, ...]:
    """The Compose CLI to use: docker-compose (v1 or v2 standalone) or `docker compose`."""
    standalone = shutil.which("docker-compose")
    if standalone:
        return (standalone,)
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=TIMEOUT
        )
        if probe.returncode == 0:
            return (docker, "compose")
    pytest.fail(
        "Neither `docker-compose` nor the `docker compose` plugin is available, so "
        "docker-compose.yml cannot be validated; "
        + INSTALL_HINT.format(pkg="docker-compose"),
        pytrace=False,
    )


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        *compose_command(),
        "--project-directory",
        str(ROOT),
        "-f",
        str(COMPOSE_FILE),
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)


@lru_cache(maxsize=1)
def compose_config() -> dict[str, Any]:
    """docker-compose.yml as rendered by `compose config`, parsed into a dict."""
    if yaml is not None:
        proc = run_compose("config")
        assert proc.returncode == 0, (
            f"`{shlex.join(proc.args)}` failed (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}"
        )
        data = yaml.safe_load(proc.stdout)
    else:
        proc = run_compose("config", "--format", "json")  # Compose v2 only
        if proc.returncode != 0:
            pytest.fail(
                "PyYAML is not installed and this Compose CLI cannot print JSON "
                f"(`{shlex.join(proc.args)}` exit {proc.returncode}: {proc.stderr.strip()}); "
                "install the dev dependencies (pip install -e '.[dev]') or pyyaml.",
                pytrace=False,
            )
        data = json.loads(proc.stdout)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), data
    return data


def service(name: str) -> dict[str, Any]:
    services = compose_config()["services"]
    assert name in services, f"service {name!r} missing; have {sorted(services)}"
    return services[name]


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # "KEY=value" form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def volumes_of(svc: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    """(source, target, type) for each mount; v1 prints strings, v2 prints dicts."""
    mounts = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            if len(parts) == 1:
                mounts.append((None, parts[0], "volume"))
            else:
                source, target = parts[0], parts[1]
                kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
                mounts.append((source, target, kind))
        else:
            mounts.append((vol.get("source"), vol["target"], vol.get("type", "volume")))
    return mounts


def ports_of(svc: dict[str, Any]) -> set[tuple[int, int]]:
    """(published, target) pairs; both short and long syntax."""
    pairs = set()
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            pairs.add((int(port["published"]), int(port["target"])))
        else:
            spec = str(port).split("/")[0]
            *host, target = spec.split(":")
            pairs.add((int(host[-1]), int(target)))
    return pairs


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_of(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments removed."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "Dockerfile ends with a line continuation"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def exec_form(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"expected exec (JSON array) form, got: {args}", pytrace=False)
    assert isinstance(value, list), args
    return value


# --------------------------------------------------------------------------- compose


def test_compose_config_is_valid_and_has_all_services():
    services = set(compose_config()["services"])
    missing = EXPECTED_SERVICES - services
    assert not missing, f"missing services {sorted(missing)}; have {sorted(services)}"


def test_kafka_is_single_node_kraft():
    kafka = service("kafka")
    assert kafka["image"].startswith("apache/kafka:"), kafka["image"]
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "EXTERNAL://localhost:29092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    listeners = env["KAFKA_LISTENERS"].split(",")
    for name, port in (("PLAINTEXT", 9092), ("CONTROLLER", 9093), ("EXTERNAL", 29092)):
        assert any(l.startswith(f"{name}://") and l.endswith(f":{port}") for l in listeners), listeners
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert (29092, 29092) in ports_of(kafka)
    test = kafka["healthcheck"]["test"]
    test_text = test if isinstance(test, str) else " ".join(test)
    assert "kafka-broker-api-versions.sh" in test_text
    assert "--bootstrap-server localhost:9092" in test_text


def test_app_services_share_the_built_image():
    for name in ("topics", "worker-1", "worker-2", "simulator"):
        svc = service(name)
        assert svc["image"] == APP_IMAGE, (name, svc.get("image"))
        build = svc.get("build")
        assert build, f"{name} has no build section"
        assert Path(build["context"]).resolve() == ROOT, (name, build)
        assert build.get("dockerfile") == "deploy/Dockerfile", (name, build)
        assert env_of(svc).get("KAFKA_BOOTSTRAP_SERVERS") == "kafka:9092", name


def test_topics_is_a_one_shot_after_kafka_is_healthy():
    topics = service("topics")
    assert command_of(topics) == ["topics", "create"]
    assert depends_on(topics) == {"kafka": "service_healthy"}
    assert topics.get("restart", "no") == "no"


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_worker_definition(name):
    worker = service(name)
    assert command_of(worker) == ["worker"]
    env = env_of(worker)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env.get("RETENTION_DATA_DIR", DATA_DIR) == DATA_DIR
    assert int(env.get("RETENTION_WEB_PORT", WEB_PORT)) == WEB_PORT
    assert depends_on(worker).get("topics") == "service_completed_successfully"
    assert worker.get("restart") == "unless-stopped"
    assert worker.get("stop_grace_period") == "30s"
    assert (WORKERS[name], WEB_PORT) in ports_of(worker)


def test_workers_have_distinct_named_state_volumes():
    declared = set(compose_config().get("volumes") or {})
    sources = {}
    for name in WORKERS:
        data_mounts = [m for m in volumes_of(service(name)) if m[1] == DATA_DIR]
        assert len(data_mounts) == 1, f"{name} must mount exactly one volume at {DATA_DIR}"
        source, _, kind = data_mounts[0]
        assert kind == "volume" and source, f"{name}: {DATA_DIR} must be a named volume"
        assert source in declared, f"{name}: volume {source!r} not declared at top level"
        sources[name] = source
    assert len(set(sources.values())) == len(WORKERS), f"workers share state volumes: {sources}"


def test_simulator_runs_after_topics():
    sim = service("simulator")
    assert command_of(sim) == ["simulate", "--speed", "86400"]
    assert depends_on(sim).get("topics") == "service_completed_successfully"


def test_prometheus_service_mounts_the_config():
    prom = service("prometheus")
    image = prom["image"]
    assert image.startswith("prom/prometheus:v"), f"pin a prom/prometheus vX.Y.Z tag, got {image}"
    assert not image.endswith(":latest")
    assert (9090, 9090) in ports_of(prom)
    binds = {
        target: source
        for source, target, _ in volumes_of(prom)
        if source and Path(source).name == "prometheus.yml"
    }
    assert "/etc/prometheus/prometheus.yml" in binds, volumes_of(prom)
    assert Path(binds["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_CONFIG


# --------------------------------------------------------------------------- prometheus


def test_promtool_check_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "`promtool` not found, so deploy/prometheus/prometheus.yml cannot be validated; "
            + INSTALL_HINT.format(pkg="prometheus"),
            pytrace=False,
        )
    proc = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"promtool check config failed:\n{proc.stdout}{proc.stderr}"


def test_prometheus_scrapes_every_worker():
    if yaml is None:
        pytest.fail("PyYAML is required to read prometheus.yml (pip install pyyaml)", pytrace=False)
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "prometheus" in jobs
    job = jobs["retention-workers"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = set()
    for static in job["static_configs"]:
        assert static.get("labels", {}).get("service") == "retention-streams", static
        targets.update(static["targets"])
    # Scrape targets are compose service names on the in-container web port.
    assert targets == {f"{name}:{WEB_PORT}" for name in WORKERS}


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_entrypoint_and_cmd():
    stage = final_stage()
    entrypoints = [args for kw, args in stage if kw == "ENTRYPOINT"]
    cmds = [args for kw, args in stage if kw == "CMD"]
    assert entrypoints, "final stage has no ENTRYPOINT"
    assert exec_form(entrypoints[-1]) == ["retention"]
    assert cmds and exec_form(cmds[-1]) == ["worker"]


def test_dockerfile_runs_as_non_root():
    users = [args for kw, args in final_stage() if kw == "USER"]
    assert users, "final stage has no USER line, so the container would run as root"
    user = users[-1].split(":")[0].strip()
    assert user not in {"root", "0", ""}, f"final USER is {users[-1]!r}"


def test_dockerfile_base_volume_and_port():
    instructions = dockerfile_instructions()
    stage = final_stage()
    bases = [args.split()[0] for kw, args in instructions if kw == "FROM"]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for kw, a in instructions if kw == "ARG" and "=" in a}
    resolved = [args.get(b.strip("${}"), b) if b.startswith("$") else b for b in bases]
    assert resolved[-1].startswith("python:3.11-slim"), resolved
    volumes = " ".join(a for kw, a in stage if kw == "VOLUME")
    assert DATA_DIR in volumes, "RETENTION_DATA_DIR must be declared as a VOLUME"
    env_text = " ".join(a for kw, a in stage if kw == "ENV")
    assert f"RETENTION_DATA_DIR={DATA_DIR}" in env_text
    exposed = " ".join(a for kw, a in stage if kw == "EXPOSE").split()
    assert str(WEB_PORT) in {p.split("/")[0] for p in exposed}


def test_dockerfile_copies_exist_and_are_not_dockerignored():
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for must_ignore in (".venv", ".git", "var"):
        assert must_ignore in ignored, f".dockerignore should exclude {must_ignore}"
    sources = []
    for kw, args in dockerfile_instructions():
        if kw != "COPY" or "--from=" in args:
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        sources.extend(parts[:-1])
    assert sources, "Dockerfile copies nothing from the build context"
    for src in sources:
        name = src.rstrip("/")
        assert name not in ignored, f"{src} is copied by the Dockerfile but excluded by .dockerignore"
        assert (ROOT / name).exists(), f"Dockerfile copies {src}, which does not exist in the repo"
