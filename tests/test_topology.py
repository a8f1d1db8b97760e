"""``docker-compose.yml`` must not rot: its rules checked statically, then every service's own
command started as a local process on 127.0.0.1, and the loop driven through the load balancer.

No container engine runs on the test machines, so :class:`LocalCompose` plays the engine's part:
named volumes become directories, bind mounts become translated copies, each ``expose``d port of
a service gets a free local port (``service:port`` elsewhere becomes ``127.0.0.1:<local>``),
the files an image ``COPY``s onto its ``PATH`` come from the repository, ``$$`` unescapes to
``$``, and ``depends_on`` conditions wait for the service's own translated ``healthcheck`` or
exit status. Once the devices enrolled and reported through the balancer, the controller's own
command runs one federated round over the TLS SuperLink and the authenticated SuperNodes, whose
ServerApp publishes the next version through the balancer.

What stays a substitution: PostgreSQL is the local server on 5432 with a fresh database
(``db``'s URL is replaced), nginx is Debian's package (installed by the test when missing),
agents and servers get short poll and telemetry intervals, the devices an eligibility policy
that ignores the machine's load, and the controller a schedule due within seconds and a run
config of one short round (``ROUND``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from edgefleet.datasets import Dataset
from simulation.fleet_flower import round_lines
from tests.registry.support import PostgresDatabases, postgres  # noqa: F401  (fixture)
from tests.server.processes import Proc, free_port, publish, scrape, set_alias, spawn, total
from tests.server.runner_support import scaled_weights

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
BIN = Path(sys.executable).parent
ONE_SHOT = "service_completed_successfully"
TEST_ENV = {  # the only settings the test adds: shorter intervals than production
    "server": {"EDGEFLEET_SERVER_POLL_INTERVAL_S": "1",
               "EDGEFLEET_SERVER_LAST_SEEN_INTERVAL_S": "0",
               "EDGEFLEET_SERVER_LOG_LEVEL": "WARNING"},
    "agent": {"EDGEFLEET_AGENT_POLL_INTERVAL_S": "1", "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "1",
              "EDGEFLEET_AGENT_OUTBOX_BACKOFF_BASE_S": "0.5",
              # eligibility: the test machine is busy (load) and its network has no metering
              # information; a device's policy would otherwise decline to train
              "EDGEFLEET_AGENT_MAX_LOAD_PER_CORE": "1000",
              "EDGEFLEET_AGENT_REQUIRE_UNMETERED": "false"},
}
ROUND = {  # the federated round the test has the controller start: one round, one epoch
    "num-rounds": 1, "base-epochs": 1, "max-extra-epochs": 0, "eval-clients": 0,
    "wait-for-nodes-s": 60.0, "query-timeout-s": 60.0, "train-timeout-s": 120.0,
    "poll-interval-s": 0.5}


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves anchors and merges
    return data


def dockerfiles(compose: dict[str, Any]) -> dict[str, Path]:
    """Image name -> the Dockerfile that builds it."""
    out = {}
    for svc in compose["services"].values():
        if "build" in svc:
            out[svc["image"]] = REPO / svc["build"].get("context", ".") / svc["build"]["dockerfile"]
    return out


def one_shots(compose: dict[str, Any]) -> set[str]:
    return {dep for svc in compose["services"].values()
            for dep, cond in (svc.get("depends_on") or {}).items()
            if cond.get("condition") == ONE_SHOT}


# --- the rules ---------------------------------------------------------------------------------
def test_compose_rules() -> None:
    compose = load()
    services = compose["services"]
    shots = one_shots(compose)
    servers = [n for n in services if re.fullmatch(r"server-\d+", n)]
    assert len(servers) >= 2
    devices = [n for n in services if re.fullmatch(r"device-\d+", n)]
    assert len(devices) >= 2
    for d in devices:  # an agent and its SuperNode share the device's own volume
        vol = f"{d}:/var/lib/edgefleet"
        assert vol in services[d]["volumes"] and vol in services[f"{d}-supernode"]["volumes"]
    for name, svc in services.items():
        if name not in shots:
            assert "healthcheck" in svc, f"{name} has no healthcheck"
            assert svc.get("restart") == "unless-stopped", name
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        for dep, cond in deps.items():
            assert dep in services and cond["condition"] in (
                "service_healthy", ONE_SHOT), (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (name, dep)
        for key, value in (svc.get("environment") or {}).items():  # secrets only in env files
            assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET", key), f"{name}: {key}"
            assert "change-me" not in str(value)
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0]
            if not source.startswith("."):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
            else:
                assert (REPO / source).exists(), f"{name}: {source} is missing"
        for env_file in svc.get("env_file") or []:
            assert (REPO / f"{env_file}.example").is_file(), env_file
    link = services["superlink"]["command"]
    assert "--enable-supernode-auth" in link and "--ssl-certfile" in link
    assert "--insecure" not in " ".join(" ".join(s.get("command") or []) for s in services.values())
    conf = (REPO / "deploy/nginx/nginx.conf").read_text()
    assert all(f"server {s}:8000" in conf for s in servers)


def test_compose_runners_rules() -> None:
    """Two runners or more, each reaching the registry through the fleet's balancer with the
    deployment CA, behind their own balancer that names every one and forwards /v2 alone."""
    services = load()["services"]
    runners = [n for n in services if re.fullmatch(r"runner-\d+", n)]
    assert len(runners) >= 2
    for name in runners:
        svc = services[name]
        argv = svc["command"]
        assert argv[:3] == ["edgefleet", "server", "runner"], name
        assert argv[argv.index("--registry") + 1] == "https://lb:8443", name
        assert svc["image"] == services["server-1"]["image"]  # the server image, no extra build
        assert svc["environment"]["EDGEFLEET_RUNNER_CA_FILE"] == "/certs/ca.pem"
        assert "certs:/certs:ro" in svc["volumes"]
        assert svc["env_file"] == ["deploy/env/runner.env"]
        assert "/v2/health/ready" in " ".join(svc["healthcheck"]["test"])
    balancer = services["runner-lb"]
    assert set(balancer["depends_on"]) == set(runners)
    assert all(c["condition"] == "service_healthy" for c in balancer["depends_on"].values())
    assert "8444:8444" in balancer["ports"]
    conf = (REPO / "deploy/nginx/runners.conf").read_text()
    assert all(f"server {r}:8080" in conf for r in runners)
    assert re.findall(r"location (\S+) \{", conf) == ["/v2", "/"]
    assert "non_idempotent" in conf
    certs = services["certs"]["command"]  # the server certificate names the runners' balancer
    names = {certs[i + 1] for i, a in enumerate(certs) if a == "--server-name"}
    assert {"lb", "runner-lb"} <= names


def test_init_env_gives_runners_the_servers_keys(tmp_path: Path) -> None:
    """The runners' inference keys are the servers' (shadow-sampled requests are sent to a server
    with the caller's key) and their runner key is one of the servers' runner keys, for fresh
    files and for a server.env kept from before runners existed."""
    def env(path: Path) -> dict[str, str]:
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)

    def check(out: Path) -> None:
        server, runner = env(out / "server.env"), env(out / "runner.env")
        keys = server["EDGEFLEET_SERVER_INFERENCE_KEYS"]
        assert runner["EDGEFLEET_RUNNER_INFERENCE_KEYS"] == keys
        secrets = [k.split(":", 1)[1] for k in server["EDGEFLEET_SERVER_RUNNER_KEYS"].split(",")]
        assert runner["EDGEFLEET_RUNNER_RUNNER_KEY"] in secrets
        assert "change-me" not in (out / "runner.env").read_text()

    def init(out: Path) -> None:
        done = subprocess.run(["sh", str(REPO / "deploy" / "init-env.sh"), str(out)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr

    init(tmp_path / "fresh")
    check(tmp_path / "fresh")
    old = tmp_path / "old"  # an env folder written before runners: no runner key, no runner.env
    init(old)
    (old / "runner.env").unlink()
    kept = [line for line in (old / "server.env").read_text().splitlines()
            if not line.startswith("EDGEFLEET_SERVER_RUNNER_KEYS=")]
    (old / "server.env").write_text("\n".join(kept) + "\n")
    before = env(old / "server.env")
    init(old)
    check(old)
    after = env(old / "server.env")
    assert {k: after[k] for k in before} == before  # what was there is kept


def test_dockerfiles_are_multi_stage_slim_and_non_root() -> None:
    import tomllib

    files = dockerfiles(load())
    assert len(files) == 3
    for image, path in files.items():
        text = path.read_text()
        stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
        assert len(stages) >= 2, f"{path.name} is not multi-stage"
        assert re.search(r"^ARG PYTHON=\S*-slim", text, flags=re.M), f"{path.name}: not slim"
        final = text.rsplit("\nFROM ", 1)[1]
        users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
        assert users and users[-1] not in ("root", "0"), f"{image} runs as root"
        assert "--from=build" in final
    agent = files["edgefleet/agent:local"].read_text()
    extras = re.findall(r'"\.\[([a-z,-]+)\]"', agent)
    assert extras == ["edge"]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    edge = [*deps["dependencies"], *deps["optional-dependencies"]["edge"]]
    assert not [d for d in edge if "tensorflow" in d.lower()]


# --- running it ----------------------------------------------------------------------------------
def _ensure_nginx() -> str:
    """Debian's nginx binary, installed once when missing (its service is not started: the test
    runs its own nginx with the translated configuration)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("nginx is missing and cannot be installed here (apt-get install nginx)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], env=env,
                      capture_output=True, timeout=600, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300,
                       check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], env=env,
                       capture_output=True, timeout=600, check=True)
    return "/usr/sbin/nginx"


class LocalCompose:
    """Run the services of ``docker-compose.yml`` as local processes (see the module notes)."""

    def __init__(self, root: Path, env_files: Path, db_url: str) -> None:
        self.compose = load()
        self.services: dict[str, Any] = self.compose["services"]
        self.root = root
        self.env_files = env_files
        self.db_url = db_url
        self.procs: dict[str, Proc] = {}
        self.done: set[str] = {"db"}  # PostgreSQL: the local server (see the module notes)
        self.ports = {(name, int(p)): free_port() for name, svc in self.services.items()
                      for p in svc.get("expose") or []}
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self._image_paths = {image: self._copies(path)
                             for image, path in dockerfiles(self.compose).items()}
        nginx = _ensure_nginx()
        (self.bin / "nginx").symlink_to(nginx)

    # --- translation -----------------------------------------------------------------------
    def _copies(self, dockerfile: Path) -> dict[str, Path]:
        """Container path -> repository path of the files the final stage ``COPY``s in; those
        under ``/opt/edgefleet/bin`` become executables on the local ``PATH``."""
        final = dockerfile.read_text().rsplit("\nFROM ", 1)[1]
        out = {}
        for line in final.splitlines():
            parts = line.split()
            if parts[:1] != ["COPY"] or any(p.startswith("--from") for p in parts):
                continue
            src, dest = [p for p in parts[1:] if not p.startswith("--")]
            out[dest] = REPO / src
            if dest.startswith("/opt/edgefleet/bin/") and not (self.bin / Path(dest).name
                                                                ).exists():
                (self.bin / Path(dest).name).symlink_to(REPO / src)
        return out

    def _paths(self, name: str) -> list[tuple[str, str]]:
        svc = self.services[name]
        paths = {k: str(v) for k, v in self._image_paths.get(svc.get("image", ""), {}).items()}
        for vol in svc.get("volumes") or []:
            source, target = vol.split(":")[:2]
            if source.startswith("."):
                local = self._bind(name, REPO / source, target)
                paths[target] = str(local)
                paths.setdefault(str(Path(target).parent), str(local.parent))
            else:
                local = self.root / "volumes" / source
                local.mkdir(parents=True, exist_ok=True)
                paths[target] = str(local)
        for target in svc.get("tmpfs") or []:
            local = self.root / "tmpfs" / name / target.strip("/").replace("/", "_")
            local.mkdir(parents=True, exist_ok=True)
            paths[target] = str(local)
        paths["/tmp/"] = f"{self.root / 'tmp'}/"
        (self.root / "tmp").mkdir(exist_ok=True)
        return sorted(paths.items(), key=lambda kv: -len(kv[0]))

    def _bind(self, name: str, source: Path, target: str) -> Path:
        """A bind-mounted file, translated for the local processes (once)."""
        local = self.root / "binds" / name / target.lstrip("/")
        if local.exists():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        text = self._addresses(source.read_text())
        text = re.sub(r"listen (\d+)", lambda m: "listen 127.0.0.1:"
                      f"{self.ports[(name, int(m.group(1)))]}", text)
        local.write_text(_replace_paths(text, self._volume_paths(name)))
        return local

    def _volume_paths(self, name: str) -> list[tuple[str, str]]:
        out = [("/tmp/", f"{self.root / 'tmp'}/")]
        for vol in self.services[name].get("volumes") or []:
            source, target = vol.split(":")[:2]
            if not source.startswith("."):
                out.append((target, str(self.root / "volumes" / source)))
        return out

    def _addresses(self, text: str) -> str:
        for (svc, port), local in self.ports.items():
            text = re.sub(rf"\b{re.escape(svc)}:{port}\b", f"127.0.0.1:{local}", text)
        return text

    def translate(self, name: str, text: str) -> str:
        text = self._addresses(text).replace("0.0.0.0", "127.0.0.1").replace("$$", "$")
        for (svc, port), local in self.ports.items():
            if svc == name:
                text = re.sub(rf"(?<![\d.]){port}(?!\d)", str(local), text)
        return _replace_paths(text, self._paths(name))

    def argv(self, name: str, argv: list[str]) -> list[str]:
        return [self.translate(name, a) for a in argv]

    def environment(self, name: str) -> dict[str, str]:
        svc = self.services[name]
        env: dict[str, str] = {"PATH": f"{self.bin}:{BIN}:{os.environ['PATH']}"}
        for env_file in svc.get("env_file") or []:
            for line in (self.env_files / Path(env_file).name).read_text().splitlines():
                if line and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    env[key] = value
        env.update({k: self.translate(name, str(v)) for k, v in
                    (svc.get("environment") or {}).items()})
        if "EDGEFLEET_SERVER_DATABASE_URL" in env:
            env["EDGEFLEET_SERVER_DATABASE_URL"] = self.db_url
        image = svc.get("image", "")
        kind = "server" if "server" in image else "agent" if "agent" in image else ""
        env.update(TEST_ENV.get(kind, {}))
        return env

    # --- running ---------------------------------------------------------------------------
    def healthy(self, name: str) -> bool:
        test = self.services[name]["healthcheck"]["test"]
        argv = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
        try:
            return subprocess.run(self.argv(name, argv), env={**os.environ,
                                  **self.environment(name)}, capture_output=True, timeout=10,
                                  check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ready(self, dep: str, condition: str) -> bool:
        if dep in self.done:
            return True
        proc = self.procs.get(dep)
        if proc is None:
            return False
        if condition == ONE_SHOT:
            code = proc.popen.poll()
            if code not in (None, 0):
                raise AssertionError(f"{dep} exited {code}: {proc.tail()}")
            ok = code == 0
        else:
            if not proc.alive():
                raise AssertionError(f"{dep} exited: {proc.tail()}")
            ok = self.healthy(dep)
        if ok:
            self.done.add(dep)
        return ok

    def up(self, names: list[str], timeout: float = 150.0) -> None:
        """Start ``names`` as their dependencies allow; return when all are healthy/done."""
        deadline = time.monotonic() + timeout
        todo = [n for n in names if n not in self.procs and n not in self.done]
        while True:
            for name in list(todo):
                deps = self.services[name].get("depends_on") or {}
                if all(self.ready(d, c["condition"]) for d, c in deps.items()):
                    todo.remove(name)
                    self.procs[name] = spawn(name, self.argv(name, self.services[name]["command"]),
                                             self.root / "logs", self.environment(name),
                                             cwd=self.root)
            waiting = [n for n in names if n not in self.done and not self.ready(
                n, ONE_SHOT if n in one_shots(self.compose) else "service_healthy")]
            if not todo and not waiting:
                return
            if time.monotonic() > deadline:
                logs = {n: self.procs[n].tail(1500) for n in waiting if n in self.procs}
                raise AssertionError(f"not up in {timeout} s: {todo or waiting}\n{logs}")
            time.sleep(0.5)

    def url(self, name: str, port: int, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.ports[(name, port)]}"

    def down(self) -> None:
        procs = list(reversed(self.procs.values()))
        for proc in procs:  # all at once, then wait for each
            proc.terminate()
        for proc in procs:
            proc.stop(timeout=10)


def _replace_paths(text: str, paths: list[tuple[str, str]]) -> str:
    """Container paths to local ones in one pass (a local path is never translated again)."""
    if not paths:
        return text
    table = dict(paths)
    pattern = "|".join(re.escape(p) for p in sorted(table, key=len, reverse=True))
    return re.sub(pattern, lambda m: table[m.group(0)], text)


def _infer_body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.astype(np.float32).ravel().tolist()}]}


def _until(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out: {what}")


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases  # noqa: F811
             ) -> Iterator[LocalCompose]:
    root = tmp_path_factory.mktemp("topology")
    env_files = root / "env"
    done = subprocess.run(["sh", str(REPO / "deploy" / "init-env.sh"), str(env_files)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    db_url = postgres.create("topology")
    local = LocalCompose(root, env_files, db_url)
    try:
        yield local
    finally:
        local.down()
        postgres.drop(db_url)


@dataclass(frozen=True)
class Fleet:
    """The whole topology up, model ``digits`` v1 in production, every device enrolled."""

    t: LocalCompose
    devices: list[str]
    ca: str
    lb: str
    admin_key: str

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.lb, headers={"X-Admin-Key": self.admin_key},
                            verify=self.ca, timeout=60)

    def flwr(self, *args: str) -> dict[str, Any]:
        """``flwr <args> fleet --format json`` as an operator on the SuperLink's network would."""
        env = {**os.environ, **self.t.environment("register-supernodes")}
        out = subprocess.run(["flwr", *args, "fleet", "--format", "json"], env=env,
                             capture_output=True, text=True, timeout=60, check=False).stdout
        parsed: dict[str, Any] = json.loads(out[out.index("{"):]) if "{" in out else {}
        return parsed


@pytest.fixture(scope="module")
def fleet(topology: LocalCompose, digits_plan_dir: Path) -> Fleet:
    t = topology
    devices = sorted(n for n in t.services if re.fullmatch(r"device-\d+", n))
    t.up([n for n in t.services if n != "db" and not n.startswith("device-")])
    admin_key = t.environment("server-1")["EDGEFLEET_SERVER_ADMIN_KEYS"].split(":", 1)[1]
    f = Fleet(t, devices, str(t.root / "volumes" / "certs" / "ca.pem"),
              t.url("lb", 8443, "https"), admin_key)
    with f.admin() as admin:
        assert publish(admin, "digits", digits_plan_dir) == 1  # the operator's first model
        set_alias(admin, "digits", "production", 1)
    t.up(devices + [f"{d}-supernode" for d in devices])
    return f


@pytest.mark.slow
def test_the_topology_runs_and_a_device_joins_through_the_balancer(
    fleet: Fleet, digits_data: Dataset
) -> None:
    t, devices, ca, lb = fleet.t, fleet.devices, fleet.ca, fleet.lb
    with fleet.admin() as admin:
        x = digits_data.x_test[:4]
        for d in devices:  # each device pulled its model through the balancer
            agent = t.url(d, 8765)
            _until(f"{d} ready", lambda a=agent: httpx.get(f"{a}/v2/health/ready").status_code
                   == 200)
            status = httpx.get(f"{agent}/v1/status").json()
            assert status["device_id"] == d and status["active"]["version"] == 1
            r = httpx.post(f"{agent}/v2/models/digits/infer", json=_infer_body(x))
            assert r.status_code == 200 and r.json()["parameters"]["path"] == "local"
        listed = admin.get("/api/v1/devices").json()
        assert sorted(dev["id"] for dev in listed["items"]) == devices
        for d in devices:  # ... and reports telemetry through it
            _until(f"telemetry of {d}", lambda d=d: admin.get(
                "/api/v1/telemetry", params={"device": d}).json()["items"])
        assert httpx.get(f"{lb}/metrics", verify=ca).status_code == 404  # not through the LB
    for replica in ("server-1", "server-2"):  # the balancer spread the devices' requests
        m = scrape(f"{t.url(replica, 8000)}/metrics")
        assert total(m, "edgefleet_http_requests_total",
                     route="/api/v1/devices/{device_id}/assignment") > 0, replica
    online = _until("every SuperNode online", lambda: len(
        [n for n in fleet.flwr("supernode", "ls").get("nodes", [])
         if n["status"] == "online"]) == len(devices))
    assert online
    controller = scrape(f"{t.url('controller', 9400)}/metrics")
    assert total(controller, "edgefleet_fl_controller_decisions_total") >= 1
    _no_service_exited(t)


def _no_service_exited(t: LocalCompose) -> None:
    logs = " ".join(shlex.quote(p.tail(400)) for p in t.procs.values() if not p.alive()
                    and p.name not in one_shots(t.compose))
    assert not logs, f"a long-running service exited: {logs}"


def controller_once(t: LocalCompose, run_config: Mapping[str, object]
                    ) -> tuple[list[str], str]:
    """The compose controller's own command, checking twice, 1 s apart, with a schedule that
    is due by the second check (the first check only starts the schedule's clock) and
    ``run_config`` added to its run config; compose's cooldown keeps it to one start."""
    argv = list(t.services["controller"]["command"])
    for flag, value in {"--schedule-hours": "0.0001", "--interval-s": "1",
                        "--max-iterations": "2", "--metrics-port": "0"}.items():
        argv[argv.index(flag) + 1] = value
    argv += [f"--run-config={key}={value}" for key, value in run_config.items()]
    done = subprocess.run(t.argv("controller", argv), capture_output=True, text=True, timeout=180,
                          env={**os.environ, **t.environment("controller")}, cwd=t.root,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.findall(r"\(flower run (\d+)\)", done.stderr), done.stdout + done.stderr


@pytest.mark.slow
def test_the_controller_runs_a_federated_round_that_publishes_through_the_balancer(
    fleet: Fleet, digits_data: Dataset
) -> None:
    """Labelled examples on every device, then one round started by the controller over the
    TLS SuperLink with authenticated SuperNodes: v2 is published and listed by the balancer."""
    t, devices = fleet.t, fleet.devices
    for i, d in enumerate(devices):  # each device's own labelled share
        rows = slice(60 * i, 60 * (i + 1))
        r = httpx.post(f"{t.url(d, 8765)}/v1/labels", json={
            "inputs": digits_data.x_train[rows].tolist(),
            "labels": digits_data.y_train[rows].tolist()})
        assert r.status_code == 201, r.text
    n = len(devices)
    runs, out = controller_once(t, {**ROUND, "target-clients": n, "min-reports": n,
                                    "min-nodes": n})
    assert len(runs) == 1, out
    log = t.root / "logs" / "flwr-log.log"
    # ``flwr log`` streams the run's log until the SuperLink reports the run finished (one CLI
    # process instead of polling ``flwr ls``)
    log.write_text(subprocess.run(
        ["flwr", "log", runs[0], "fleet", "--stream"], capture_output=True, text=True,
        timeout=300, env={**os.environ, **t.environment("register-supernodes")},
        check=False).stdout)
    (finished,) = fleet.flwr("ls", "--run-id", runs[0]).get("runs", [])
    assert finished["status"] == "finished:completed", log.read_text()[-3000:]
    assert [line.split(":")[0] for line in round_lines(log)] == ["round 1 ok"], log.read_text()
    with fleet.admin() as admin:
        page = admin.get("/api/v1/models/digits/versions").raise_for_status().json()
    latest = max(page["items"], key=lambda v: v["version"])
    assert latest["version"] == 2, page
    assert latest["lineage"]["parent_version"] == 1
    assert latest["lineage"]["federated_round"] == 1
    assert latest["lineage"]["num_clients"] == n
    _no_service_exited(t)


@pytest.mark.slow
def test_runners_answer_behind_their_balancer_and_send_shadow_requests_to_a_server(
    fleet: Fleet, digits_data: Dataset, digits_plan_dir: Path, tmp_path: Path
) -> None:
    """Applications' V2 inference through the runners' balancer: production's answer, from both
    runners, /v2 alone; then under a shadow rollout (rate 1) a request through it is answered
    with production and both answers are in the server's inference log under its request id.
    Runs last: it publishes a version of its own."""
    t = fleet.t
    runners = sorted(n for n in t.services if re.fullmatch(r"runner-\d+", n))
    inference = t.url("runner-lb", 8444, "https")
    secret = t.environment(runners[0])["EDGEFLEET_RUNNER_INFERENCE_KEYS"].split(":", 1)[1]
    body = _infer_body(digits_data.x_test[:4])
    with httpx.Client(headers={"Authorization": f"Bearer {secret}"}, verify=fleet.ca,
                      timeout=60) as app, fleet.admin() as admin:
        reference = app.post(f"{fleet.lb}/v2/models/digits/infer", json=body)
        assert reference.status_code == 200, reference.text  # the same key on the servers
        for _ in range(10):
            r = app.post(f"{inference}/v2/models/digits/infer", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == "1"
            np.testing.assert_allclose(r.json()["outputs"][0]["data"],
                                       reference.json()["outputs"][0]["data"], atol=1e-6)
        assert app.get(f"{inference}/api/v1/models").status_code == 404  # /v2 alone
        assert app.get(f"{inference}/metrics").status_code == 404
        for name in runners:  # the balancer spread the requests
            m = scrape(f"{t.url(name, 8080)}/metrics")
            assert total(m, "edgefleet_runner_inference_requests_total") > 0, name

        candidate = publish(admin, "digits", digits_plan_dir, plan_from=1,
                            weights=scaled_weights(digits_plan_dir, tmp_path / "shadow"))
        r = admin.post("/api/v1/rollouts", json={
            "model": "digits", "candidate": candidate, "strategy": "shadow", "shadow_rate": 1.0,
            "guards": [], "approval": True, "steps": [{"bake_s": 3600, "timeout_s": 7200}]})
        assert r.status_code == 201, r.text
        rollout = r.json()["id"]
        try:
            def logged(request_id: str) -> list[dict[str, Any]]:
                items: list[dict[str, Any]] = admin.get("/api/v1/inferences", params={
                    "model": "digits", "request_id": request_id}).json()["items"]
                return items

            sent: list[str] = []

            def shadowed() -> str | None:  # one more request through the runners; a logged one
                sent.append(f"topology-shadow-{len(sent)}")
                r = app.post(f"{inference}/v2/models/digits/infer", json=body,
                             headers={"X-Request-ID": sent[-1]})
                assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
                time.sleep(0.5)
                return next((i for i in sent[-5:] if logged(f"{i}:shadow")), None)

            request_id = _until("a request through the runners shadowed by a server", shadowed,
                                timeout=90)
            production = _until("its production answer logged", lambda: logged(request_id))
            assert {(r["version"], r["variant"]) for r in production} == {(1, "baseline")}
            shadows = logged(f"{request_id}:shadow")
            assert {(r["version"], r["variant"]) for r in shadows} == {(candidate, "shadow")}
        finally:
            r = admin.post(f"/api/v1/rollouts/{rollout}/abort", json={"reason": "test over"})
            assert r.status_code == 200, r.text
    _no_service_exited(t)
