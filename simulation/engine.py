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


# --- Flower's in-memory LinkState, indexed by destination --------------------------------------
def index_linkstate() -> None:
    """Give Flower's ``InMemoryLinkState`` a by-destination index of its stored messages (once).

    Flower's simulation runtime (``vce_api.add_messages_to_queue``) asks the LinkState, every
    0.1 s, for the next message of *each* node, and ``get_message_ins`` scans every stored
    message for each of them: O(nodes x stored messages) per poll, in the driver, under the
    state's lock. With every node queried at once that is 10^6 message checks a poll at 1,000
    clients and 10^8 at 10,000, and the driver does little else. The index keeps, per
    destination, the ids of its stored messages in arrival order; ``get_message_ins`` applies
    the same checks (``_check_stored_messages``, run id, not yet delivered) to those only and
    marks what it returns delivered, as the original does.
    """
    from flwr.server.superlink.linkstate import in_memory_linkstate as ims

    cls = ims.InMemoryLinkState
    if getattr(cls, "_edgefleet_indexed", False):
        return
    store = cls.store_message_ins

    def store_message_ins(self: Any, message: Any) -> str | None:
        message_id = store(self, message)
        if message_id is not None:
            with self.lock:
                index = self.__dict__.setdefault("_edgefleet_by_dst", {})
                index.setdefault(message.metadata.dst_node_id, {})[message_id] = None
        return message_id

    def get_message_ins(self: Any, node_id: int, limit: int | None, *,
                        run_id: int | None = None) -> list[Any]:
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        found: list[Any] = []
        with self.lock:
            ids = self.__dict__.get("_edgefleet_by_dst", {}).get(node_id, {})
            for message_id in list(ids):
                self._check_stored_messages({message_id})
                msg = self.message_ins_store.get(message_id)
                if msg is None or msg.metadata.delivered_at != "":
                    del ids[message_id]  # deleted or delivered: never returned again
                    continue
                if run_id is None or msg.metadata.run_id == run_id:
                    found.append(msg)
                if limit and len(found) == limit:
                    break
        delivered_at = ims.now().isoformat()
        for msg in found:
            msg.metadata.delivered_at = delivered_at
        return found

    cls._edgefleet_scan_get_message_ins = cls.get_message_ins  # type: ignore[attr-defined]
    cls.store_message_ins = store_message_ins  # type: ignore[method-assign]
    cls.get_message_ins = get_message_ins  # type: ignore[method-assign]
    cls._edgefleet_indexed = True  # type: ignore[attr-defined]


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
    index_linkstate()
    if exp.engine.kind == "inprocess":
        return _run_in_process(exp)
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


def _run_in_process(exp: Experiment) -> ExperimentResult:
    """``engine.kind = "inprocess"``: :func:`simulation.inprocess.run_in_process`, its outputs
    written and its peak memory (this process) in ``run.json``."""
    from simulation.inprocess import run_in_process

    with MemoryWatch(uuid.uuid4().hex) as mem:
        result = run_in_process(exp, workers=max(1, exp.engine.num_cpus), write=True)
    result.run_info["peak_memory_mb"] = round(mem.peak_kb / 1024, 1)
    (exp.out_dir() / "run.json").write_text(json.dumps(result.run_info, indent=1))
    return result
