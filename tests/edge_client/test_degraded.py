"""Degraded but serving: a real agent process (``edgefleet agent run``) on a read-only data
folder, and on a full one, still starts and answers local inference; label uploads it cannot
store get 503 (read-only) or 507 (full), never 500.

The data folder is a tmpfs mounted in the child's own user and mount namespace (``unshare
-Urm``; skipped where unprivileged namespaces are not available) and then remounted read-only
or filled up: permission bits would not stop a root process, a read-only mount does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.edge_client.conftest import MODEL
from tests.edge_client.server_process import free_port
from tests.edge_client.test_disk_full import _unshare_works

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _unshare_works(), reason="no user/mount namespaces here")]

_SETUP = r"""
import sys
from pathlib import Path
from edge_client.agent import Agent
from edge_client.settings import AgentSettings
data, plan_dir = Path(sys.argv[1]), Path(sys.argv[2])
with Agent(AgentSettings(data_dir=data, http_port=-1)) as agent:  # offline: no credentials
    agent.models.install_dir(plan_dir, sys.argv[3], 1)
    agent.record_label([[0.0] * 64], [3])
"""

_FILL = r"""
import os, sys
st = os.statvfs(sys.argv[1])
with open(os.path.join(sys.argv[1], "filler"), "wb") as f:
    try:
        f.write(b"\0" * (st.f_bavail * st.f_frsize))
    except OSError:
        pass
"""


def _start(tmp_path: Path, plan_dir: Path, condition: str) -> tuple[subprocess.Popen, int]:
    mount = tmp_path / "data"
    mount.mkdir()
    port = free_port()
    after = ("mount -o remount,ro \"$M\"" if condition == "read-only"
             else f"{sys.executable} -c '{_FILL}' \"$M\"")
    script = (
        f"M={mount}; mount -t tmpfs -o size=4m tmpfs \"$M\" && "
        f"{sys.executable} -c '{_SETUP}' \"$M/agent\" {plan_dir} {MODEL} && {after} && "
        f"exec {sys.executable} -m edgefleet_cli agent run --data-dir \"$M/agent\" "
        f"--http-port {port}"
    )
    env = {**os.environ, "EDGEFLEET_AGENT_MIN_FREE_BYTES": "0"}
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(["unshare", "-Urm", "sh", "-c", script],
                            cwd=Path(__file__).resolve().parents[2], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "agent.log").read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise AssertionError("agent not ready: " + (tmp_path / "agent.log").read_text()[-3000:])


@pytest.mark.parametrize(("condition", "upload_status"), [("read-only", 503), ("full", 507)])
def test_agent_starts_serves_and_refuses_uploads_clearly(
    tmp_path: Path, digits_plan_dir: Path, condition: str, upload_status: int
) -> None:
    proc, port = _start(tmp_path, digits_plan_dir, condition)
    base = f"http://127.0.0.1:{port}"
    try:
        body = {"inputs": [{"name": "x", "shape": [2, 64], "datatype": "FP32",
                            "data": [0.0] * 128}]}
        answer = httpx.post(f"{base}/v2/models/{MODEL}/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["parameters"]["path"] == "local"
        rows = 4000 if condition == "full" else 1  # more than the few KiB left
        labels = httpx.post(f"{base}/v1/labels", timeout=30,
                            json={"inputs": [[1.0] * 64] * rows, "labels": [1] * rows})
        assert labels.status_code == upload_status, labels.text
        assert "error" in labels.json()
        status = httpx.get(f"{base}/v1/status", timeout=10).json()
        assert status["active"]["version"] == 1
        if condition == "read-only":
            assert all("read-only" in v or "readonly" in v or "memory" in v
                       for v in status["storage"].values()), status["storage"]
        assert httpx.post(f"{base}/v2/models/{MODEL}/infer", json=body,
                          timeout=10).status_code == 200  # still serving after the refusal
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    if condition == "read-only":
        assert "storage degraded, serving anyway" in log


def test_status_json_is_reported(tmp_path: Path) -> None:
    """The condition is part of ``Agent.status`` in a normal folder too (all ``ok``)."""
    from edge_client.agent import Agent
    from edge_client.settings import AgentSettings

    with Agent(AgentSettings(data_dir=tmp_path / "a", http_port=-1)) as agent:
        assert agent.storage_condition() == {"state": "ok", "labels": "ok", "outbox": "ok"}
        assert json.loads(json.dumps(agent.status()))["storage"]["labels"] == "ok"
