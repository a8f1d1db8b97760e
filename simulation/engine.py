"""Run an experiment on Flower's simulation engine with the production round loop.

:func:`run_experiment` prepares the run (data, plan, partitions, the population saved for the
workers), then calls ``flwr.simulation.run_simulation`` (Ray backend) with

* a ServerApp whose main drives :class:`aggregation.rounds.RoundRunner` — the production query,
  selection (policy, over-selection, fairness), drift steering, update validation and Flower
  strategy — on a :class:`~simulation.sim_grid.SimGrid` (the simulated clock);
* the simulated device ClientApp (:mod:`simulation.client_app`), training through
  :class:`edgefleet.runtime.PlanRuntime`.

After each round the driver evaluates the new global model (:mod:`simulation.results`), writes
the row and moves the progress bar. TensorFlow never loads in the workers: the engine puts a
stub ``tensorflow`` package first on the workers' ``PYTHONPATH`` (Flower's Ray actor module would
otherwise import TensorFlow, when installed, in every worker); the client replies say whether it
was loaded, and the result records it.

``engine.ray_address`` joins an existing Ray cluster (``ray start --head`` on the first machine,
``ray start --address HEAD:6379`` on the others, this project installed on each); empty starts a
private local instance. Every process the run starts carries an environment token; the run's
peak memory is the largest sum of their resident sizes, and any that outlive it are stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulation.config import Experiment
from simulation.errors import ExperimentError
from simulation.results import ExperimentResult

log = logging.getLogger(__name__)

RUN_TOKEN = "EDGEFLEET_SIM_RUN"
OFFLINE_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
               "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
_NO_TF = ('raise ModuleNotFoundError("TensorFlow is kept out of EdgeFleet\'s simulation '
          'workers", name="tensorflow")\n')


# --- processes of the run ---------------------------------------------------------------------
def _token_pids(token: str) -> list[int]:
    needle = f"{RUN_TOKEN}={token}".encode()
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    out.append(int(proc.name))
    return out


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class MemoryWatch:
    """Samples the summed resident memory of this process and the run's token processes."""

    def __init__(self, token: str, interval_s: float = 0.5) -> None:
        self.token = token
        self.interval_s = interval_s
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            total = _rss_kb(os.getpid()) + sum(_rss_kb(p) for p in _token_pids(self.token))
            self.peak_kb = max(self.peak_kb, total)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def stop_leftovers(token: str, grace_s: float = 10.0) -> int:
    """Wait for the run's processes to exit; SIGTERM then SIGKILL those still running."""
    import signal

    deadline = time.monotonic() + grace_s
    while (pids := _token_pids(token)) and time.monotonic() < deadline:
        time.sleep(0.5)
    stray = len(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        time.sleep(1.0)
        if not (pids := _token_pids(token)):
            break
    return stray


@contextlib.contextmanager
def _worker_env(token: str) -> Any:
    """Offline Flower, the run token, and the no-TensorFlow stub for the Ray workers."""
    saved = {k: os.environ.get(k) for k in [*OFFLINE_ENV, RUN_TOKEN, "PYTHONPATH"]}
    with tempfile.TemporaryDirectory(prefix="edgefleet-sim-") as tmp:
        stub = Path(tmp) / "tensorflow"
        stub.mkdir()
        (stub / "__init__.py").write_text(_NO_TF)
        os.environ.update(OFFLINE_ENV)
        os.environ[RUN_TOKEN] = token
        sys.path.insert(0, tmp)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(tmp)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# --- the run --------------------------------------------------------------------------------------
def backend_config(exp: Experiment) -> dict[str, Any]:
    """Flower's Ray backend config for ``exp.engine`` (address or a bounded local instance)."""
    init: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if exp.engine.ray_address:
        init["address"] = exp.engine.ray_address
    else:
        init["num_cpus"] = exp.engine.num_cpus or (os.cpu_count() or 1)
    return {"client_resources": {"num_cpus": exp.engine.client_cpus, "num_gpus": 0.0},
            "init_args": init}


def run_experiment(exp: Experiment, *, on_round: Callable[[dict[str, Any]], None] | None = None,
                   keep_round_weights: bool = False) -> ExperimentResult:
    """Run ``exp`` (``backend = "flower"``) and write its results (see the package README)."""
    from simulation.prepare import prepare_run

    if exp.backend != "flower":
        raise ExperimentError("run_experiment runs the Flower backend; the TFF reference is "
                              "simulation.tff_backend.run_tff")
    prepared = prepare_run(exp)
    token = uuid.uuid4().hex
    started = time.monotonic()
    with _worker_env(token), MemoryWatch(token) as mem:
        from simulation.server import SimServer

        server = SimServer(exp, prepared, on_round=on_round, keep_weights=keep_round_weights)
        server.simulate(backend_config(exp))
    stray = stop_leftovers(token)
    wall = time.monotonic() - started
    if server.error is not None:
        raise ExperimentError(f"the simulation failed: {server.error}") from server.error
    if len(server.rows) != exp.rounds:
        raise ExperimentError(f"the simulation stopped after {len(server.rows)} of "
                              f"{exp.rounds} rounds (see the Ray/Flower log above)")
    info = {"wall_s": round(wall, 2), "peak_memory_mb": round(mem.peak_kb / 1024, 1),
            "leftover_processes_stopped": stray, "worker_tf_loaded": server.tf_loaded,
            "ray_address": exp.engine.ray_address or "local",
            "plan_dir": str(prepared.plan_dir)}
    from simulation.report import write_outputs

    result = ExperimentResult(exp, exp.out_dir(), server.rows, server.summary(),
                              server.weights, server.round_weights, info)
    write_outputs(result, server.timings)
    (exp.out_dir() / "run.json").write_text(json.dumps(info, indent=1))
    return result
