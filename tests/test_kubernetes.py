"""``deploy/kubernetes`` must not rot: both overlays rendered, validated offline against a pinned
Kubernetes version's schemas, and checked against the code.

Rendering: :mod:`tests.kustomize` (kustomize's semantics for the fields these files use; where a
``kubectl`` binary exists, its ``kubectl kustomize`` output must be the same). Validation:
``kubernetes-validate`` with the JSON schemas it bundles (strict: unknown fields are errors), for
:data:`KUBERNETES_VERSION`. Against the code: every probe path is a route of the FastAPI app the
container runs (the server's, the runner's) and every probe and Service port is one the
container listens on (its ``--port``/``--metrics-port``); every ``edgefleet`` command and option
exists in the Typer CLI; every other command is on the image's ``PATH``; every environment
variable a container sets is read by the settings class of its prefix, by a Typer option's
``envvar``, or by the program named for it in :data:`READERS` (whose source is searched for the
name); every Secret, ConfigMap and key a pod refers to exists in the small overlay; every image
is built by a Dockerfile in ``deploy/docker``. Not checked here: that a cluster accepts and
runs it (no cluster runs on the test machines; see README, "Kubernetes").
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from pydantic_settings import BaseSettings
from starlette.routing import Match

from tests.kustomize import render

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
OVERLAYS = ("small", "production")
#: The Kubernetes version whose schemas the manifests are validated against.
KUBERNETES_VERSION = "1.32.0"
WORKLOADS = ("Deployment", "StatefulSet", "Job")
IMAGES = {"edgefleet/server": "server.Dockerfile", "edgefleet/fl": "fl.Dockerfile"}
#: Variables read by programs other than EdgeFleet's settings: the package (or repository file)
#: whose source must mention the name.
READERS: dict[str, str] = {
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client",
    "FORWARDED_ALLOW_IPS": "uvicorn",
    "FLWR_HOME": "flwr",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "flwr",
    "FLWR_DISABLE_UPDATE_CHECK": "flwr",
    "FLWR_TELEMETRY_ENABLED": "flwr",
    "SSL_CERT_FILE": "httpx",
    "CERTS_DIR": "deploy/flwr/register-supernodes.sh",
    "FLWR_CONNECTION": "deploy/flwr/register-supernodes.sh",
    "EDGEFLEET_ADMIN_KEY": "edgefleet/run_settings.py",  # the ServerApp inside the SuperLink
}
#: The PostgreSQL image's documented variables (only the small overlay runs it).
POSTGRES_IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "PGDATA"}


def _rendered(overlay: str) -> list[dict[str, Any]]:
    return render(KUBE / "overlays" / overlay)


@pytest.fixture(scope="module", params=OVERLAYS)
def resources(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return _rendered(request.param)


def _pods(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for r in resources:
        if r["kind"] in WORKLOADS:
            yield r, r["spec"]["template"]["spec"]


def _containers(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for r, pod in _pods(resources):
        for c in pod["containers"]:
            yield r, c


def _edgefleet(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for r, c in _containers(resources):
        if c["image"].split(":")[0].endswith(tuple(IMAGES)):
            yield r, c


# --- rendering and schemas ---------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_like_kubectl_kustomize(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl binary here: the renderer's output is checked by the tests below")
    out = subprocess.run([kubectl, "kustomize", str(KUBE / "overlays" / overlay)],
                         capture_output=True, text=True, check=True, timeout=120).stdout

    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"]

    theirs = {key(r): r for r in yaml.safe_load_all(out) if r}
    mine = {key(r): r for r in _rendered(overlay)}
    assert mine == theirs


def test_every_resource_validates_against_the_pinned_schemas(
        resources: list[dict[str, Any]]) -> None:
    assert len(resources) > 15
    for r in resources:
        kubernetes_validate.validate(r, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_what_a_cluster_would(resources: list[dict[str, Any]]) -> None:
    deployment = next(r for r in resources if r["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_parts_are_there(resources: list[dict[str, Any]]) -> None:
    kinds = {(r["kind"], r["metadata"]["name"]) for r in resources}
    for part in [("Deployment", "edgefleet-server"), ("Deployment", "edgefleet-runner"),
                 ("HorizontalPodAutoscaler", "edgefleet-runner"),
                 ("StatefulSet", "edgefleet-superlink"), ("Job", "edgefleet-migrate"),
                 ("Job", "edgefleet-register-supernodes"), ("Ingress", "edgefleet"),
                 ("PodDisruptionBudget", "edgefleet-server"),
                 ("PodDisruptionBudget", "edgefleet-runner"), ("Service", "edgefleet-server"),
                 ("Service", "edgefleet-runner"), ("Service", "edgefleet-superlink")]:
        assert part in kinds
    namespaces = {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces
    hpa = next(r for r in resources if r["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "edgefleet-runner"


# --- security and resources --------------------------------------------------------------------
def test_pods_run_non_root_with_read_only_roots_and_limits(
        resources: list[dict[str, Any]]) -> None:
    for r, pod in _pods(resources):
        assert pod["securityContext"]["runAsNonRoot"] is True, r["metadata"]["name"]
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod.get("automountServiceAccountToken") is False
        writable = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for c in pod["containers"]:
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/tmp") in writable, f"{c['name']}: /tmp must be an emptyDir"


def test_every_long_running_workload_has_probes_and_a_disruption_budget(
        resources: list[dict[str, Any]]) -> None:
    budgets = [r for r in resources if r["kind"] == "PodDisruptionBudget"]
    for r, pod in _pods(resources):
        if r["kind"] == "Job":
            continue
        for c in pod["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, c["name"]
        if r["kind"] == "Deployment":
            labels = r["spec"]["template"]["metadata"]["labels"]
            assert any(set(b["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())
                       for b in budgets), r["metadata"]["name"]


# --- against the code -------------------------------------------------------------------------
def _app_for(command: list[str]) -> Any:
    """The FastAPI app an ``edgefleet`` command serves (None when it serves none)."""
    if command[:3] == ["edgefleet", "server", "run"]:
        from server.main import create_app
        from server.settings import ServerSettings

        return create_app(ServerSettings(database_url="sqlite://", auto_migrate=False))
    if command[:3] == ["edgefleet", "server", "runner"]:
        from server.runner.app import create_runner_app
        from server.runner.settings import RunnerSettings

        return create_runner_app(RunnerSettings(cache_dir=Path("runner-cache")))  # in tmp_path
    return None


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def _is_route(app: Any, path: str) -> bool:
    scope = {"type": "http", "path": path, "method": "GET", "root_path": "",
             "query_string": b"", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


def test_probes_hit_real_routes_on_the_ports_the_processes_listen_on(
        resources: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for _, c in _containers(resources):
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        command = c.get("command", [])
        listens = {int(p) for p in (_option(command, "--port"), _option(command, "--metrics-port"))
                   if p is not None}
        if command[:1] == ["edgefleet"] or command[:1] == ["flower-superlink"]:
            assert set(ports.values()) == listens, (c["name"], ports, listens)
        app = _app_for(command)
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = c.get(kind)
            if probe is None or "exec" in probe:
                continue
            action = probe.get("httpGet") or probe["tcpSocket"]
            port = ports.get(action["port"], action["port"])
            assert port in ports.values(), (c["name"], kind, action)
            if "httpGet" in probe:
                path = probe["httpGet"]["path"]
                if app is not None:
                    assert _is_route(app, path), (c["name"], kind, path)
                    assert not _is_route(app, path + "-nowhere")  # the match is a real check
                else:  # the controller's Prometheus server answers /metrics on --metrics-port
                    assert path == "/metrics" and port == int(_option(command, "--metrics-port")
                                                              or -1)


def _click_command(argv: list[str]) -> Any:
    from edgefleet_cli.main import app

    command: Any = typer.main.get_command(app)
    rest = argv[1:]
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest[0]]
        rest = rest[1:]
    assert not hasattr(command, "commands") or command.invoke_without_command, argv
    return command, rest


@functools.cache
def _superlink_help() -> str:
    return subprocess.run([str(Path(sys.executable).parent / "flower-superlink"), "--help"],
                          capture_output=True, text=True, timeout=120, check=True).stdout


def test_every_command_exists(resources: list[dict[str, Any]]) -> None:
    dockerfile_text = {img: (REPO / "deploy/docker" / f).read_text() for img, f in IMAGES.items()}
    superlink_help = _superlink_help()
    for _, c in _edgefleet(resources):
        argv = c["command"]
        if argv[0] == "edgefleet":
            command, rest = _click_command(argv)
            known = {o for p in command.params for o in p.opts}
            given = [a for a in rest if a.startswith("--")]
            assert set(given) <= known, (argv, set(given) - known)
        elif argv[0] == "flower-superlink":
            for option in (a for a in argv if a.startswith("--")):
                assert re.search(rf"\s{re.escape(option)}\b", superlink_help), option
        else:  # a script the image copies onto its PATH
            image = c["image"].split(":")[0].split("/", 1)[-1]
            text = dockerfile_text[f"edgefleet/{image.rsplit('/', 1)[-1]}"]
            assert re.search(rf"COPY .* /opt/edgefleet/bin/{re.escape(argv[0])}\b", text), argv


def _settings_fields() -> dict[str, set[str]]:
    from edge_client.settings import AgentSettings
    from server.runner.settings import RunnerSettings
    from server.settings import ServerSettings
    from server.worker.settings import WorkerSettings

    out = {}
    cls: type[BaseSettings]
    for cls in (ServerSettings, RunnerSettings, AgentSettings, WorkerSettings):
        prefix = cls.model_config["env_prefix"]
        out[prefix] = {prefix + name.upper() for name in cls.model_fields}
    return out


def _cli_envvars(argv: list[str]) -> set[str]:
    if argv[:1] != ["edgefleet"]:
        return set()
    command, _ = _click_command(argv)
    return {e for p in command.params for e in ([p.envvar] if isinstance(p.envvar, str)
                                                  else (p.envvar or []))}


def _source_mentions(reader: str, name: str) -> bool:
    if "/" in reader:
        return name in (REPO / reader).read_text()
    spec = importlib.util.find_spec(reader)
    assert spec is not None and spec.submodule_search_locations, reader
    root = Path(next(iter(spec.submodule_search_locations)))
    return any(name in p.read_text(errors="ignore") for p in root.rglob("*.py"))


def _env_names(c: dict[str, Any], resources: list[dict[str, Any]]) -> set[str]:
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        ref = source.get("configMapRef") or source["secretRef"]
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == ref["name"]]
        assert found, f"{kind} {ref['name']} is not rendered"
        names |= set(found[0].get("data", {})) | set(found[0].get("stringData", {}))
    return names


def _unread(c: dict[str, Any], resources: list[dict[str, Any]]) -> list[str]:
    """The variables container ``c`` sets that nothing reads (see the module notes)."""
    names = _env_names(c, resources)
    if c["image"].startswith("postgres:"):
        return sorted(names - POSTGRES_IMAGE_ENV)
    fields = _settings_fields()
    envvars = _cli_envvars(c.get("command", []))
    out = []
    for name in sorted(names):
        prefix = next((p for p in fields if name.startswith(p)), None)
        if prefix is not None:
            read = name in fields[prefix]
        else:
            read = name in envvars or (name in READERS
                                       and _source_mentions(READERS[name], name))
        if not read:
            out.append(name)
    return out


def test_every_environment_variable_is_read(resources: list[dict[str, Any]]) -> None:
    checked = set()
    for _, c in _containers(resources):
        assert _unread(c, resources) == [], c["name"]
        checked |= _env_names(c, resources)
    assert "EDGEFLEET_SERVER_DATABASE_URL" in checked and "EDGEFLEET_RUNNER_RUNNER_KEY" in checked
    # the check sees a misspelt setting and a variable nothing reads
    _, server = next((r, c) for r, c in _containers(resources) if c["name"] == "server")
    broken = {**server, "env": [*server["env"], {"name": "EDGEFLEET_SERVER_DATABASE_URI"},
                                {"name": "EDGEFLEET_NOTHING"}]}
    assert _unread(broken, resources) == ["EDGEFLEET_NOTHING", "EDGEFLEET_SERVER_DATABASE_URI"]


def test_runners_are_given_no_database() -> None:
    from server.runner.settings import RunnerSettings

    assert not [f for f in RunnerSettings.model_fields
                if "database" in f or (f.endswith("_url") and f != "registry_url")]
    for overlay in OVERLAYS:
        runner = next(r for r in _rendered(overlay) if r["metadata"]["name"] == "edgefleet-runner"
                      and r["kind"] == "Deployment")
        (c,) = runner["spec"]["template"]["spec"]["containers"]
        assert not [e for e in c.get("env", []) if "DATABASE" in e["name"]]
        assert all("configMapRef" in s for s in c.get("envFrom", []))


def _references(pod: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key) of every Secret and ConfigMap a pod needs (optional ones left out)."""
    for c in pod["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if field in ref and not ref[field].get("optional"):
                    yield kind, ref[field]["name"], ref[field]["key"]
        for s in c.get("envFrom", []):
            ref = s.get("configMapRef") or s["secretRef"]
            yield ("ConfigMap" if "configMapRef" in s else "Secret"), ref["name"], None
    for v in pod.get("volumes", []):
        if "secret" in v:
            for item in v["secret"].get("items", [{"key": None}]):
                yield "Secret", v["secret"]["secretName"], item["key"]
        if "configMap" in v:
            yield "ConfigMap", v["configMap"]["name"], None


def test_every_secret_and_config_map_referred_to_exists() -> None:
    resources = _rendered("small")  # production creates its Secrets out of band (README)
    data = {(r["kind"], r["metadata"]["name"]): {**r.get("data", {}), **r.get("stringData", {})}
            for r in resources if r["kind"] in ("Secret", "ConfigMap")}
    for r, pod in _pods(resources):
        for kind, name, key in _references(pod):
            assert (kind, name) in data, f"{r['metadata']['name']}: {kind} {name} missing"
            assert key is None or key in data[(kind, name)], (kind, name, key)
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                if "subPath" in m:
                    volume = next(v for v in pod["volumes"] if v["name"] == m["name"])
                    assert m["subPath"] in data[("ConfigMap", volume["configMap"]["name"])]


def test_images_are_the_deploy_dockerfiles_and_services_reach_named_ports(
        resources: list[dict[str, Any]]) -> None:
    for _, c in _edgefleet(resources):
        name = c["image"].split(":")[0]
        assert any(name.endswith(img) for img in IMAGES)
    for img, dockerfile in IMAGES.items():
        assert (REPO / "deploy/docker" / dockerfile).is_file(), img
    services = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Service"}
    for svc in services.values():
        selected = [pod for r, pod in _pods(resources) if set(svc["spec"]["selector"].items())
                    <= set(r["spec"]["template"]["metadata"]["labels"].items())]
        assert selected, svc["metadata"]["name"]
        names = {p["name"] for pod in selected for c in pod["containers"]
                 for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)
    ingress = next(r for r in resources if r["kind"] == "Ingress")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
            assert backend["port"]["name"] in ports
