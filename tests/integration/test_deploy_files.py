"""Static checks of the deployment files: docker-compose.yml, deploy/Dockerfile,
.dockerignore, deploy/prometheus (scrape configuration, alert rules and their unit tests),
deploy/grafana (provisioning and the dashboard) and deploy/k8s.

No Docker engine is needed. The compose file is rendered with the real Compose
CLI (``docker-compose config`` or ``docker compose config``) so that anchors,
merge keys and defaults are resolved exactly as Compose resolves them, and the
Prometheus config is checked with ``promtool check config``.

Prometheus config is checked with ``promtool check config``, the alert rules with
``promtool check rules`` and ``promtool test rules``, the Kubernetes manifests offline with
kubernetes-validate (strict, against a fixed Kubernetes version).

Required tools (Debian packages): ``docker-compose`` and ``prometheus`` (which
provides ``promtool``). These tests fail, never skip, when a tool is missing.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
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
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "retention.json"
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"

APP_IMAGE = "retention-streams:local"
DATA_DIR = "/var/lib/retention"
WORKERS = {"worker-1": 6066, "worker-2": 6067}  # service -> published host port
WEB_PORT = 6066
EXPECTED_SERVICES = {"kafka", "topics", "worker-1", "worker-2", "simulator", "heartbeat", "prometheus", "grafana"}

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


KEY_FILE = "/var/lib/retention-key/snapshot.key"
PSEUDONYM_KEY_FILE = "/var/lib/retention-key/pseudonym.key"


def test_workers_share_a_snapshot_key_made_once_by_a_one_shot(tmp_path):
    """No key in the file: the snapshot-key service makes one in a volume the workers mount."""
    keygen = service("snapshot-key")
    [(volume, target, kind)] = volumes_of(keygen)
    assert kind == "volume" and target == str(Path(KEY_FILE).parent) and keygen.get("restart", "no") == "no"
    for name in WORKERS:
        worker = service(name)
        assert env_of(worker)["RETENTION_SNAPSHOT_KEY_FILE"] == KEY_FILE and "RETENTION_SNAPSHOT_KEY" not in env_of(worker)
        # customers' privacy is on for new deployments: pseudonyms keyed by a key made once beside the snapshot key
        assert env_of(worker)["RETENTION_PSEUDONYMIZE"] == "true"
        assert env_of(worker)["RETENTION_PSEUDONYM_KEY_FILE"] == PSEUDONYM_KEY_FILE and "RETENTION_PSEUDONYM_KEY" not in env_of(worker)
        assert (volume, target, "volume") in volumes_of(worker) and depends_on(worker)["snapshot-key"] == "service_completed_successfully"
    assert "RETENTION_SNAPSHOT_KEY=" not in COMPOSE_FILE.read_text() and "RETENTION_SNAPSHOT_KEY:" not in COMPOSE_FILE.read_text()
    # the one-shot's program, run here on a temporary path: a 64-hex-character key readable by its owner only, made once
    assert keygen["entrypoint"] == ["python", "-c"]
    [program] = keygen["command"]
    key, pseudonym_key = tmp_path / "snapshot.key", tmp_path / "pseudonym.key"
    program = program.replace(KEY_FILE, str(key)).replace(PSEUDONYM_KEY_FILE, str(pseudonym_key))
    for _ in range(2):
        subprocess.run([sys.executable, "-c", program], check=True, timeout=TIMEOUT)
        made, made_pseudonym = key.read_text(), pseudonym_key.read_text()
        for k, text in ((key, made), (pseudonym_key, made_pseudonym)):
            assert len(text) == 64 and int(text, 16) >= 0 and k.stat().st_mode & 0o777 == 0o400
    assert key.read_text() == made and pseudonym_key.read_text() == made_pseudonym != made  # kept on the next run


def test_simulator_runs_after_topics():
    sim = service("simulator")
    assert command_of(sim) == ["simulate", "--speed", "86400"]
    assert depends_on(sim).get("topics") == "service_completed_successfully"


def heartbeat_args_are_a_valid_command(args: list[str]) -> None:
    from typer.testing import CliRunner

    from streams.cli import app

    assert args[0] == "heartbeat"
    result = CliRunner().invoke(app, [*args, "--help"])  # unknown options fail before --help answers
    assert result.exit_code == 0, result.output


def test_heartbeat_service_runs_for_live_producers_only_after_topics():
    beat = service("heartbeat")
    assert beat["image"] == APP_IMAGE and env_of(beat)["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert beat["profiles"] == ["live"]  # not beside the simulator's own event time
    assert depends_on(beat) == {"topics": "service_completed_successfully"}
    assert beat["restart"] == "unless-stopped"
    heartbeat_args_are_a_valid_command(command_of(beat))


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


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail(
            "`promtool` not found, so deploy/prometheus cannot be validated; "
            + INSTALL_HINT.format(pkg="prometheus"),
            pytrace=False,
        )
    return subprocess.run([tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)


def test_promtool_check_config():
    proc = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert proc.returncode == 0, f"promtool check config failed:\n{proc.stdout}{proc.stderr}"
    assert "1 rule files found" in proc.stdout, proc.stdout  # alerts.yml is loaded


def test_promtool_check_rules():
    proc = promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}{proc.stderr}"
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout, proc.stdout


def test_every_alert_fires_in_promtool_unit_tests_and_stays_silent_otherwise():
    proc = promtool("test", "rules", str(ALERTS_TEST))
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}{proc.stderr}"
    assert "SUCCESS" in proc.stdout, proc.stdout
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    firing, silent = set(), set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert firing == names, f"alerts never shown firing: {names - firing}"
    assert silent == names, f"alerts never shown silent: {names - silent}"


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def exported_metric_names() -> set[str]:
    from prometheus_client import generate_latest

    import streams.runtime.metrics  # noqa: F401  (registers every metric of a worker)
    from tests.promql import exported_names

    return exported_names(generate_latest().decode())


def test_alerts_use_only_metrics_the_workers_export():
    from tests.promql import metric_names

    exported = exported_metric_names() | {"up"}
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used and used <= exported, (rule["alert"], used - exported)
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]


def test_prometheus_service_loads_the_alert_rules():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    binds = {target: source for source, target, _ in volumes_of(service("prometheus")) if source}
    assert Path(binds["/etc/prometheus/alerts.yml"]).resolve() == ALERTS


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


# --------------------------------------------------------------------------- grafana


def test_grafana_service_provisions_the_datasource_and_the_dashboard():
    grafana = service("grafana")
    image = grafana["image"]
    assert image.startswith("grafana/grafana-oss:") and image.split(":")[1][0].isdigit(), f"pin a tag, got {image}"
    assert (3000, 3000) in ports_of(grafana)
    binds = {target: Path(source).resolve() for source, target, kind in volumes_of(grafana) if kind == "bind"}
    assert binds["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "retention.yml").read_text())["providers"]
    assert binds[provider["options"]["path"]] == DASHBOARD.parent  # the provider reads the mounted dashboards
    [datasource] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose_config()["services"] and (9090, 9090) in ports_of(service("prometheus"))
    dashboard = json.loads(DASHBOARD.read_text())
    # the datasource is a variable (any Grafana picks its Prometheus), the provisioned one by default
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    chooser = variables["datasource"]
    assert (chooser["type"], chooser["query"], chooser["current"]["value"]) == ("datasource", "prometheus", datasource["uid"])
    refs = [t["datasource"] for p in dashboard["panels"] for t in p.get("targets", [])]
    refs += [p["datasource"] for p in dashboard["panels"] if "datasource" in p] + [variables["instance"]["datasource"]]
    assert {r["uid"] for r in refs} == {"${datasource}"} and {r["type"] for r in refs} == {"prometheus"}
    assert f'"uid": "{datasource["uid"]}"' not in DASHBOARD.read_text()  # no hard-coded uid left


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "retention-streams" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    # every PromQL expression names only metrics a worker exports (the integration test checks
    # the same against a live worker's /metrics and runs each one on a real Prometheus)
    from tests.promql import metric_names

    from prometheus_client import generate_latest

    from tests.promql import families

    exported = exported_metric_names() | {"up"}
    used = set()
    for panel in panels:
        for target in panel["targets"]:
            assert metric_names(target["expr"]) <= exported, (panel["title"], target["expr"])
            used |= metric_names(target["expr"])
    unshown = {family for family, names in families(generate_latest().decode()).items() if not names & used}
    assert not unshown, f"metrics without a panel: {sorted(unshown)}"


# --------------------------------------------------------------------------- kubernetes


def k8s_documents() -> dict[str, dict[str, Any]]:
    """kind/name -> manifest, for every file the kustomization lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = kustomization["resources"]
    assert sorted(files) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    docs = {}
    for name in files:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def test_k8s_manifests_validate_against_the_kubernetes_schemas():
    import kubernetes_validate

    docs = k8s_documents()
    assert set(docs) == {
        "ConfigMap/retention-streams", "Job/retention-topics", "StatefulSet/retention-worker",
        "Service/retention-worker", "Service/retention-worker-metrics",
        "PodDisruptionBudget/retention-worker", "HorizontalPodAutoscaler/retention-worker", "Deployment/retention-heartbeat",
    }
    for key, doc in docs.items():
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key}: {exc.message} at {'/'.join(map(str, exc.path))}", pytrace=False)


def test_k8s_configmap_holds_valid_settings(monkeypatch):
    from streams.runtime.settings import Settings, settings_markdown

    data = k8s_documents()["ConfigMap/retention-streams"]["data"]
    known = {line.split("`")[1] for line in settings_markdown().splitlines()[2:]}
    assert set(data) <= known, set(data) - known
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RETENTION_PSEUDONYM_KEY", "p" * 64)  # (from the retention-pseudonym-key Secret)
    settings = Settings()  # validates every value
    assert settings.pseudonymize
    assert (settings.web_host, settings.log_format) == ("0.0.0.0", "json")


def test_the_policy_file_reaches_every_deployment_unchanged():
    """The image, compose and k8s all run the shipped deploy/policy.yaml at RETENTION_POLICY_FILE."""
    from streams.domain.policy_file import load_policy_text

    shipped = (ROOT / "deploy" / "policy.yaml").read_text()
    load_policy_text(shipped, "policy.yaml")  # valid
    docs = k8s_documents()
    # kubectl apply -k deploy: deploy/k8s plus the ConfigMap generated from the shipped file itself
    # (no copy to keep in step; the hash in its name rolls the workers when it changes)
    root = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    assert root["resources"] == ["k8s"]
    [generator] = root["configMapGenerator"]
    assert generator["files"] == ["policy.yaml"] and "disableNameSuffixHash" not in generator.get("options", {})
    assert not [d for d in docs.values() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == generator["name"]]
    path = docs["ConfigMap/retention-streams"]["data"]["RETENTION_POLICY_FILE"]
    pod = docs["StatefulSet/retention-worker"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == generator["name"] == "retention-policy"
    assert volumes["policy"]["configMap"].get("items", [{"key": "policy.yaml"}])[0]["key"] == "policy.yaml"
    assert path == mounts["policy"]["mountPath"] + "/policy.yaml"
    env = dict(a.split("=", 1) for kw, args in final_stage() if kw == "ENV" for a in shlex.split(args) if "=" in a)
    assert env["RETENTION_POLICY_FILE"] == path
    copies = [shlex.split(args) for kw, args in dockerfile_instructions() if kw == "COPY" and "policy.yaml" in args]
    assert copies == [["deploy/policy.yaml", path]]
    for name in ("worker-1", "worker-2"):
        binds = {target: source for source, target, kind in volumes_of(service(name)) if kind == "bind"}
        assert Path(binds[path]).resolve() == ROOT / "deploy" / "policy.yaml"


def test_k8s_statefulset_probes_state_volume_and_graceful_stop():
    docs = k8s_documents()
    config = docs["ConfigMap/retention-streams"]["data"]
    sts = docs["StatefulSet/retention-worker"]["spec"]
    pod = sts["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["worker"]
    assert container["envFrom"] == [{"configMapRef": {"name": "retention-streams"}}]
    [port] = container["ports"]
    assert port["containerPort"] == int(config["RETENTION_WEB_PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": port["name"]}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    [claim] = sts["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == config["RETENTION_DATA_DIR"] == DATA_DIR
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user, owner of the volume via fsGroup
    headless = docs[f"Service/{sts['serviceName']}"]["spec"]
    assert headless["clusterIP"] == "None"
    labels = sts["template"]["metadata"]["labels"]
    assert sts["selector"]["matchLabels"] == labels
    for key in ("Service/retention-worker", "Service/retention-worker-metrics"):
        assert docs[key]["spec"]["selector"].items() <= labels.items(), key
        assert [p["targetPort"] for p in docs[key]["spec"]["ports"]] == [port["name"]], key
    assert docs["PodDisruptionBudget/retention-worker"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_heartbeat_deployment_sends_what_compose_sends_with_the_workers_settings():
    docs = k8s_documents()
    spec = docs["Deployment/retention-heartbeat"]["spec"]
    assert spec["replicas"] == 1 and spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    [container] = spec["template"]["spec"]["containers"]
    assert container["args"] == command_of(service("heartbeat"))
    heartbeat_args_are_a_valid_command(container["args"])
    assert container["envFrom"] == [{"configMapRef": {"name": "retention-streams"}}]
    assert container["image"] == docs["Job/retention-topics"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def component(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A kustomize Component of deploy/k8s/components: its kustomization and its resources."""
    folder = K8S / "components" / name
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    return kustomization, [yaml.safe_load((folder / f).read_text()) for f in kustomization["resources"]]


def test_k8s_service_monitor_component_scrapes_the_metrics_service():
    docs = k8s_documents()
    _, [monitor] = component("service-monitor")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    metrics = docs["Service/retention-worker-metrics"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= docs["Service/retention-worker"]["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in metrics["spec"]["ports"]} and endpoint["path"] == "/metrics"


def test_k8s_keda_component_scales_like_the_hpa_on_exported_lag_and_replaces_it():
    from tests.promql import metric_names

    docs = k8s_documents()
    kustomization, [scaled] = component("keda")
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    hpa = docs["HorizontalPodAutoscaler/retention-worker"]["spec"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == hpa["scaleTargetRef"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert metric_names(trigger["metadata"]["query"]) == {"retention_consumer_lag_records"} <= exported_metric_names()
    assert trigger["metadata"]["threshold"] == hpa["metrics"][0]["external"]["target"]["averageValue"]
    [patch] = kustomization["patches"]
    deleted = yaml.safe_load(patch["patch"])
    assert deleted["$patch"] == "delete" and (deleted["kind"], deleted["metadata"]["name"]) == ("HorizontalPodAutoscaler", "retention-worker")


def test_k8s_workers_take_the_snapshot_key_from_a_secret_not_shipped():
    docs = k8s_documents()
    [container] = docs["StatefulSet/retention-worker"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    key = env["RETENTION_SNAPSHOT_KEY"]["valueFrom"]["secretKeyRef"]
    previous = env["RETENTION_SNAPSHOT_KEYS_PREVIOUS"]["valueFrom"]["secretKeyRef"]
    assert key["name"] == previous["name"] and not key.get("optional") and previous["optional"] is True
    assert "value" not in env["RETENTION_SNAPSHOT_KEY"]
    assert not [name for name in docs if name.startswith("Secret/")]  # each deployment makes its own
    assert f"kubectl create secret generic {key['name']}" in (K8S / "kustomization.yaml").read_text()
    assert not {k for k in docs["ConfigMap/retention-streams"]["data"] if k.startswith("RETENTION_SNAPSHOT_KEY")}


def test_k8s_workers_take_the_pseudonym_key_from_a_secret_not_shipped():
    docs = k8s_documents()
    [container] = docs["StatefulSet/retention-worker"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    key = env["RETENTION_PSEUDONYM_KEY"]["valueFrom"]["secretKeyRef"]
    previous = env["RETENTION_PSEUDONYM_KEYS_PREVIOUS"]["valueFrom"]["secretKeyRef"]
    assert key["name"] == previous["name"] == "retention-pseudonym-key" and not key.get("optional") and previous["optional"] is True
    assert f"kubectl create secret generic {key['name']}" in (K8S / "kustomization.yaml").read_text()
    assert not {k for k in docs["ConfigMap/retention-streams"]["data"] if k.startswith("RETENTION_PSEUDONYM_KEY")}


def test_k8s_autoscaling_on_consumer_lag():
    docs = k8s_documents()
    hpa = docs["HorizontalPodAutoscaler/retention-worker"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "retention-worker"}
    [metric] = hpa["metrics"]
    assert metric["type"] == "External" and metric["external"]["metric"]["name"] in exported_metric_names()
    assert metric["external"]["metric"]["name"] == "retention_consumer_lag_records"
    partitions = int(docs["ConfigMap/retention-streams"]["data"]["RETENTION_PARTITIONS"])
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"] <= partitions  # a worker beyond the partitions owns nothing


# --------------------------------------------------------------------------- access to the HTTP API


def test_compose_workers_take_the_api_token_from_the_environment_and_publish_on_this_host_only(monkeypatch):
    monkeypatch.setenv("RETENTION_API_TOKEN", "f" * 64)
    proc = run_compose("config")
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    for name, published in WORKERS.items():
        assert env_of(services[name])["RETENTION_API_TOKEN"] == "f" * 64, name
        [port] = services[name]["ports"]
        host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
        assert (host_ip, int(port["published"]) if isinstance(port, dict) else published) == ("127.0.0.1", published), port


def test_k8s_workers_read_the_api_token_from_a_secret_and_kafka_clients_the_sasl_password():
    docs = k8s_documents()
    pod = docs["StatefulSet/retention-worker"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    token_file = Path(env["RETENTION_API_TOKEN_FILE"]["value"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    [(name, mount)] = [(n, m) for n, m in mounts.items() if m["mountPath"] == str(token_file.parent)]
    assert mount["readOnly"] and volumes[name]["secret"] == {
        "secretName": "retention-api-token", "items": [{"key": "token", "path": token_file.name}]}  # required: no optional flag
    assert "RETENTION_API_TOKEN" not in docs["ConfigMap/retention-streams"]["data"]  # a secret, never in the ConfigMap
    jobs = [container, docs["Job/retention-topics"]["spec"]["template"]["spec"]["containers"][0]]
    for spec in jobs:
        [password] = [e for e in spec["env"] if e["name"] == "RETENTION_KAFKA_SASL_PASSWORD"]
        assert password["valueFrom"]["secretKeyRef"] == {"name": "retention-kafka", "key": "sasl-password", "optional": True}
    probes = [container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")]
    annotations = docs["StatefulSet/retention-worker"]["spec"]["template"]["metadata"]["annotations"]
    from streams.runtime.web import OPEN_PATHS

    assert {*probes, annotations["prometheus.io/path"]} <= OPEN_PATHS  # probes and scrapes need no token


def test_k8s_separate_trainer_component_runs_one_trainer_and_tells_the_workers_not_to_train(monkeypatch):
    import kubernetes_validate

    from streams.runtime.settings import Settings

    docs = k8s_documents()
    kustomization, [deployment] = component("separate-trainer")
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    [container] = spec["template"]["spec"]["containers"]
    assert container["args"] == ["trainer"] and container["envFrom"] == [{"configMapRef": {"name": "retention-streams"}}]
    worker = docs["StatefulSet/retention-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == worker["image"]
    env = {e["name"]: e for e in container["env"]}
    worker_env = {e["name"]: e for e in worker["env"]}
    for name in ("RETENTION_SNAPSHOT_KEY", "RETENTION_SNAPSHOT_KEYS_PREVIOUS", "RETENTION_KAFKA_SASL_PASSWORD"):
        assert env[name] == worker_env[name], name  # it signs the snapshots the workers check
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert docs["ConfigMap/retention-streams"]["data"]["RETENTION_DATA_DIR"] in mounts  # a read-only root: Faust writes there
    [patch] = kustomization["patches"]
    patched = yaml.safe_load(patch["patch"])
    assert (patched["kind"], patched["metadata"]["name"]) == ("ConfigMap", "retention-streams")
    for name, value in patched["data"].items():
        monkeypatch.setenv(name, value)
    assert Settings().trainer == "separate"  # for the workers and the trainer alike
