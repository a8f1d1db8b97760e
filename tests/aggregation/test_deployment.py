"""The real ServerApp on Flower's deployment engine: SuperLink and SuperNodes as processes.

``aggregation.server_app:app`` runs under ``flwr run`` against a SuperLink and four SuperNodes on
127.0.0.1 (one of them sends NaN weights), talks to a real EdgeFleet server over HTTP, and must
publish a new version that beats the initial model, refuse the NaN update, and — run again
with a larger budget under the same run name — resume after the last published round. A run
asking for more valid reports than there are nodes fails its rounds cleanly: the run completes,
nothing is published, and the SuperLink and SuperNodes serve the next run.

The nodes run the test ClientApp of ``digits_app.py`` (the real plan in TFLite, message shapes of
``edge_client.flower_client``); the whole fleet with edge agents is tested in
``tests/simulation/test_fleet.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aggregation.registry_client import RegistryClient
from edgefleet.run_settings import app_config_table
from tests.aggregation.conftest import Server, free_port, register_plan
from tests.aggregation.test_federation import untrained  # noqa: F401  (fixture)

MODEL = "digits-deploy"
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODES = ["honest", "honest", "honest", "nan"]


@dataclass(frozen=True)
class Deployment:
    app: Path
    env: dict[str, str]
    logs: Path


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """Terminate our processes and everything they spawned (SuperExec, app processes).

    Every process gets SIGTERM at once and shares one grace period; what is left is killed.
    """
    family = {d for p in procs for d in descendants(p.pid)}
    for p in procs:
        p.terminate()
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    while (alive := [pid for pid in family if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (reaping it when it is our exited child)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, untrained: Path  # noqa: F811
               ) -> Iterator[Deployment]:
    """A Flower app dir, a SuperLink and four SuperNodes; the env ``flwr`` needs."""
    root = tmp_path_factory.mktemp("flower")
    app, home = root / "app", root / "home"
    app.mkdir()
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n[superlink.test]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n")
    config = "\n".join(f"{k} = {json.dumps(v)}" for k, v in app_config_table().items())
    (app / "pyproject.toml").write_text(textwrap.dedent("""\
        [project]
        name = "aggdeploy"
        version = "1.0.0"
        description = "deployment test"
        license = "Apache-2.0"
        dependencies = []

        [tool.flwr.app]
        publisher = "edgefleet"

        [tool.flwr.app.components]
        serverapp = "aggregation.server_app:app"
        clientapp = "depclient:app"

        [tool.flwr.app.config]
        """) + config + "\n")
    (app / "depclient.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from edgefleet.plan import PlanManifest
        from edgefleet.datasets import load_dataset
        from tests.aggregation.digits_app import digits_client_app

        _dir = Path({str(untrained)!r})
        _ds = load_dataset("digits", seed=0)
        app = digits_client_app((_dir / "plan.tflite").read_bytes(),
                                PlanManifest.load(_dir / "manifest.json"),
                                _ds.x_train, _ds.y_train, {NODES!r})
        """))
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_TELEMETRY_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    logs = root / "logs"
    logs.mkdir()
    procs = [subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
         "--database", str(root / "superlink.db")],
        env=env, stdout=(logs / "superlink.log").open("wb"), stderr=subprocess.STDOUT)]
    for i in range(len(NODES)):
        procs.append(subprocess.Popen(
            [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
             "--port", str(free_port()), "--node-config",
             f"partition-id={i} num-partitions={len(NODES)}"],
            env=env, stdout=(logs / f"supernode{i}.log").open("wb"), stderr=subprocess.STDOUT))
    try:
        wait_for_port(port, procs[0])
        yield Deployment(app, env, logs)
    finally:
        stop(procs)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 240.0) -> None:
    """Wait until the SuperLink accepts connections (nodes are waited for by the ServerApp)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the SuperLink did not open port {port}")


def flwr_run(deployment: Deployment, config: dict[str, object]) -> tuple[str, str]:
    """``flwr run --stream``: submit the run and follow its log until the SuperLink reports it
    finished (one CLI process instead of polling ``flwr ls``); its status and its log."""
    pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
    out = subprocess.run(
        [str(BIN / "flwr"), "run", str(deployment.app), "test", "--run-config", pairs,
         "--stream"],
        env=deployment.env, capture_output=True, text=True, timeout=420, check=False)
    started = re.search(r"Successfully started run (\d+)", out.stdout)
    assert out.returncode == 0 and started, out.stdout[-3000:] + out.stderr[-3000:]
    return run_status(deployment, started.group(1)), out.stdout[started.end():]


def run_status(deployment: Deployment, run_id: str) -> str:
    """The run's status as ``flwr ls`` reports it (``finished:completed`` and its details)."""
    out = subprocess.run(
        [str(BIN / "flwr"), "ls", "test", "--run-id", run_id, "--format", "json"],
        env=deployment.env, capture_output=True, text=True, timeout=300, check=False)
    runs: list[dict[str, Any]] = []
    if "{" in out.stdout:
        runs = json.loads(out.stdout[out.stdout.index("{"):]).get("runs") or []
    if not runs:
        tail = (deployment.logs / "superlink.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"flwr ls does not list run {run_id}: {out.stdout[-2000:]}"
                             f"{out.stderr[-2000:]}\nsuperlink log:\n{tail}")
    return f"{runs[0]['status']} {runs[0].get('status-details', '')}"


@pytest.mark.slow
def test_too_few_nodes_fail_the_round_and_publish_nothing(
    deployment: Deployment, registry_server: Server, untrained: Path,  # noqa: F811
) -> None:
    """Five valid reports asked of four SuperNodes: the round fails, the run still completes.

    ``min-nodes`` 5 is waited for only 2 s, then the four connected nodes are queried and the
    round fails before any training (4 eligible < ``min-reports`` 5). Nothing is published and
    the aliases stay. Defined first on purpose: the next test needs the same SuperLink and all
    four SuperNodes to train, so it proves this failed run left them healthy.
    """
    model = "digits-too-few"
    base = register_plan(registry_server, model, untrained)
    config = {"server-url": registry_server.url, "model": model,
              "admin-key": registry_server.admin_key, "run-name": "too-few", "num-rounds": 2,
              "target-clients": 5, "min-reports": 5, "min-nodes": 5, "wait-for-nodes-s": 2.0,
              "poll-interval-s": 0.5,
              # upper bounds only: the nodes answer the query as soon as their apps started
              "query-timeout-s": 90.0, "train-timeout-s": 10.0}
    status, log_text = flwr_run(deployment, config)
    assert status.startswith("finished:completed"), status + log_text
    for r in (1, 2):
        assert f"round {r} failed (4 eligible nodes < min_reports=5)" in log_text, log_text

    with RegistryClient(registry_server.url, registry_server.admin_key) as client:
        assert client.latest_run_version(model, "too-few") is None
        assert client.production_version(model) == base
        assert client.alias(model, "canary") is None
    with registry_server.http() as http:
        page = http.get(f"/api/v1/models/{model}/versions").raise_for_status().json()
    assert [v["version"] for v in page["items"]] == [base]


@pytest.mark.slow
def test_server_app_on_superlink_and_supernodes(
    deployment: Deployment, registry_server: Server, untrained: Path,  # noqa: F811
    digits_data, tmp_path: Path,
) -> None:
    from aggregation.evaluation import Holdout
    from edgefleet.runtime import PlanRuntime

    register_plan(registry_server, MODEL, untrained)
    holdout = tmp_path / "holdout.npz"
    Holdout(digits_data.x_test, digits_data.y_test).save(holdout)
    initial = PlanRuntime.from_dir(untrained).evaluate(digits_data.x_test, digits_data.y_test)
    config = {"server-url": registry_server.url, "model": MODEL,
              "admin-key": registry_server.admin_key, "run-name": "deployed", "num-rounds": 1,
              "target-clients": 4, "min-reports": 3, "min-nodes": 4, "holdout-path": str(holdout),
              "poll-interval-s": 0.5, "base-epochs": 3, "lr": 0.1, "gate-max-drop": 0.05,
              # upper bounds only: the first messages start Python processes on 2 cores
              "query-timeout-s": 90.0, "train-timeout-s": 120.0, "wait-for-nodes-s": 90.0}
    status, log_text = flwr_run(deployment, config)
    assert status.startswith("finished:completed"), status + log_text

    with RegistryClient(registry_server.url, registry_server.admin_key) as client:
        latest = client.latest_run_version(MODEL, "deployed")
        assert latest is not None, log_text
        assert latest.lineage.federated_round == 1
        assert latest.metrics["holdout.accuracy"] > initial.accuracy + 0.2
        assert latest.metrics["round.refused"] == 1.0 and latest.lineage.num_clients == 3
        assert latest.hyperparameters["round"]["refused_reasons"] == {"not-finite": 1}
        assert client.alias(MODEL, "canary").version == latest.version  # type: ignore[union-attr]

        # the same run name with a budget of 2 rounds: only round 2 runs, on top of round 1
        status, log_text = flwr_run(deployment, {**config, "num-rounds": 2})
        assert status.startswith("finished:completed"), status + log_text
        resumed = client.latest_run_version(MODEL, "deployed")
        assert resumed is not None and resumed.lineage.federated_round == 2
        assert resumed.metrics["holdout.accuracy"] > latest.metrics["holdout.accuracy"]
        assert resumed.lineage.parent_version == latest.version
    shutil.rmtree(tmp_path, ignore_errors=True)
