"""The harness on Flower's real simulation engine (Ray): a private local instance, and a Ray
cluster the test starts and stops (its head on 127.0.0.1). Both runs of the same experiment
give the same results file, every output is written, and no worker loaded TensorFlow."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulation.engine import RUN_TOKEN, run_experiment, stop_leftovers
from tests.simulation.conftest import experiment

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def ray_head() -> Iterator[str]:
    """A Ray head on 127.0.0.1 in its own session; stopped (by its process group and run
    token) on exit. Yields its GCS address."""
    port, token = _free_port(), uuid.uuid4().hex
    temp = Path(f"/tmp/ray-{token[:8]}")
    ray = Path(sys.executable).with_name("ray")
    env = {**os.environ, RUN_TOKEN: token, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError("the Ray head did not come up within 90 s")
        time.sleep(3)  # raylet registers after the GCS port opens
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        stop_leftovers(token, grace_s=5)


def test_local_engine_and_ray_cluster_give_the_same_results(tmp_path: Path) -> None:
    kw = {"rounds": 2, "clients": {"count": 6, "per_round": 3},
          "drift": [{"kind": "brightness", "fraction": 0.5, "start_round": 2}]}
    local = run_experiment(experiment(tmp_path / "local", **kw))
    out = tmp_path / "local"
    for name in ("results.jsonl", "results.csv", "summary.json", "timings.jsonl", "run.json",
                 "report.html", "plots/accuracy.png", "plots/clients.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert local.run_info["worker_tf_loaded"] is False
    assert local.run_info["peak_memory_mb"] > 100
    assert [r["status"] for r in local.rows] == ["ok", "ok"]

    with ray_head() as address:
        remote = run_experiment(experiment(tmp_path / "cluster",
                                           engine={"ray_address": address}, **kw))
    assert remote.run_info["ray_address"] == address
    assert (tmp_path / "cluster" / "results.jsonl").read_text() == \
        (out / "results.jsonl").read_text()
