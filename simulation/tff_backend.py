"""The TensorFlow Federated reference backend (``--backend tff`` and ``--backend both``).

TFF cannot share a virtual environment with current Flower or pydantic 2, so it runs in its own
(``bash scripts/tff_venv.sh`` builds ``var/tff-venv``; ``$EDGEFLEET_TFF_PYTHON`` points
elsewhere) as a child process running :mod:`simulation.tff_worker` on the experiment's frozen
inputs (:mod:`simulation.replay`; frozen for it with :func:`simulation.replay.freeze` when the
experiment has none). The child runs in its own session and its whole process group is stopped
afterwards: TFF's execution context leaves a ``worker_binary`` child behind otherwise. A finished
TFF run is reused when its job (model, hyperparameters, the frozen file's digest) is the same.

:func:`compare_backends` runs the same frozen inputs through the Flower backend (the production
round loop and plan runtime) and TFF, evaluates both backends' weights of every round with the
same plan runtime on the test split, and reports both curves side by side with the largest
weight difference per round (``comparison.csv``, ``comparison.json``, ``comparison.png``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.plan import PlanManifest
from edgefleet.runtime import MANIFEST_FILE, PlanRuntime
from simulation.config import Experiment, parse_experiment
from simulation.errors import ExperimentError

TFF_PYTHON_ENV = "EDGEFLEET_TFF_PYTHON"
DEFAULT_VENV = Path("var/tff-venv")
WORKER = Path(__file__).with_name("tff_worker.py")


def tff_python() -> Path:
    """The TFF venv's interpreter, or :class:`ExperimentError` saying how to build it."""
    env = os.environ.get(TFF_PYTHON_ENV)
    py = Path(env) if env else DEFAULT_VENV / "bin" / "python"
    if not py.is_file():
        raise ExperimentError(f"no TensorFlow Federated environment at {py}: run "
                              f"'bash scripts/tff_venv.sh' (about 2.5 GB) or set "
                              f"{TFF_PYTHON_ENV}")
    return py


def reference_rules(exp: Experiment) -> Experiment:
    """``exp`` with the settings a replay needs (see :func:`simulation.replay.check_replay`)."""
    data = exp.model_dump()
    data["training"].update(batch_rule="drop", weighting="examples-trained")
    data["clients"].update(per_round=exp.clients.count, fraction=0.0, over_selection=1.0,
                           min_reports=1)
    data["selection"].update(steering=False, max_norm_ratio=0.0, min_cosine=-1.0,
                             max_weight_ratio=0.0)
    data["traces"].update(availability="always", dropout=0.0)
    data["adversary"].update(kind="none", fraction=0.0)
    data["drift"] = []
    return parse_experiment(data)


def frozen_inputs(exp: Experiment) -> Experiment:
    """``exp`` under the reference rules, with a frozen-inputs file (written if it has none)."""
    from simulation.replay import freeze

    exp = reference_rules(exp)
    if exp.replay.path:
        return exp
    path = freeze(exp, exp.out_dir() / "frozen.npz")
    return exp.model_copy(update={"replay": exp.replay.model_copy(update={"path": str(path)})})


@dataclass
class BackendRun:
    """Per-round weights and test accuracy of one backend."""

    name: str
    weights: list[dict[str, np.ndarray]]
    accuracy: list[float]
    out_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"{self.name}: {len(self.accuracy)} rounds -> {self.out_dir}"]
        lines += [f"  round {r:3d}: accuracy {a:.4f}" for r, a in enumerate(self.accuracy, 1)]
        return "\n".join(lines)


def _accuracies(plan_dir: Path, weights: Sequence[Mapping[str, np.ndarray]], x: np.ndarray,
                y: np.ndarray) -> list[float]:
    rt = PlanRuntime.from_dir(plan_dir)
    out = []
    for w in weights:
        rt.set_weights(w)
        out.append(rt.evaluate(x, y).accuracy)
    return out


def _stop_group(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        time.sleep(0.5)


def run_tff(exp: Experiment, *, timeout_s: float = 3600.0) -> BackendRun:
    """Run ``exp``'s frozen inputs through TFF's weighted FedAvg (see the module notes)."""
    from simulation.prepare import prepare_run

    py = tff_python()
    exp = frozen_inputs(exp)
    prepared = prepare_run(exp)  # checks the frozen inputs, saves the data split
    manifest = PlanManifest.load(prepared.plan_dir / MANIFEST_FILE)
    arch = manifest.architecture
    if arch.get("kind") != "mlp":
        raise ExperimentError("the TFF reference backend mirrors the zoo's mlp plans only, "
                              f"not {arch.get('kind')!r}")
    pre = manifest.input.preprocessing
    out = exp.out_dir() / "tff"
    out.mkdir(parents=True, exist_ok=True)
    pop = prepared.population
    np.savez(out / "data.npz", x_train=pop.x_train, y_train=pop.y_train)
    job = {"frozen": str(Path(exp.replay.path).resolve()), "data": str(out / "data.npz"),
           "out": str(out / "weights.npz"), "hidden": arch.get("hidden", []),
           "n_features": int(np.prod(manifest.input.sample_shape)),
           "n_classes": manifest.output.n_classes,
           "shift": pre.shift if pre.kind == "affine" else 0.0,
           "scale": pre.scale if pre.kind == "affine" else 1.0,
           "weight_names": manifest.weight_names(), "batch_size": manifest.train_batch_size,
           "lr": exp.training.lr, "rounds": exp.rounds}
    job["frozen_sha256"] = hashlib.sha256(Path(exp.replay.path).read_bytes()).hexdigest()
    if not (_same_job(out, job) and (out / "weights.npz").is_file()):
        _run_worker(py, out, job, timeout_s)
    with np.load(out / "weights.npz") as f:
        weights = [{n: f[f"round/{r}/{n}"] for n in manifest.weight_names()}
                   for r in range(1, exp.rounds + 1)]
    acc = _accuracies(prepared.plan_dir, weights, pop.x_test, pop.y_test)
    return BackendRun("tff", weights, acc, out, {"plan_dir": str(prepared.plan_dir)})


def _same_job(out: Path, job: Mapping[str, Any]) -> bool:
    """Whether ``out`` holds the finished TFF run of exactly this job (same frozen inputs)."""
    try:
        return bool(json.loads((out / "job.json").read_text()) == job)
    except (OSError, ValueError):
        return False


def _worker_env() -> dict[str, str]:
    """This process's environment without what would put another environment's packages on the
    worker's path (a driver that started Ray has ``PYTHONPATH`` pointing into its own venv)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    return env


def _run_worker(py: Path, out: Path, job: Mapping[str, Any], timeout_s: float) -> None:
    (out / "weights.npz").unlink(missing_ok=True)
    (out / "job.json").write_text(json.dumps(job))
    log = (out / "tff.log").open("w")
    proc = subprocess.Popen([str(py), str(WORKER), str(out / "job.json")], stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=_worker_env())
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = -1
    finally:
        _stop_group(proc)
        log.close()
    if code != 0:
        (out / "job.json").unlink(missing_ok=True)
        tail = (out / "tff.log").read_text()[-3000:]
        raise ExperimentError(f"the TFF run failed (exit {code}); {out / 'tff.log'}:\n{tail}")


@dataclass
class Comparison:
    """Flower vs TFF on the same frozen inputs, round by round."""

    rows: list[dict[str, Any]]
    out_dir: Path

    @property
    def max_weight_diff(self) -> float:
        return max(r["max_abs_weight_diff"] for r in self.rows)

    @property
    def max_acc_diff(self) -> float:
        return max(abs(r["accuracy_diff"]) for r in self.rows)

    def render(self) -> str:
        head = f"{'round':>5}  {'flower acc':>10}  {'tff acc':>8}  {'Δacc':>8}  {'max |Δw|':>9}"
        lines = [f"Flower vs TensorFlow Federated, same frozen inputs -> {self.out_dir}", head]
        lines += [f"{r['round']:>5}  {r['flower_accuracy']:>10.4f}  {r['tff_accuracy']:>8.4f}"
                  f"  {r['accuracy_diff']:>8.4f}  {r['max_abs_weight_diff']:>9.2e}"
                  for r in self.rows]
        lines.append(f"largest |Δacc| {self.max_acc_diff:.4f}, largest |Δw| "
                     f"{self.max_weight_diff:.2e}")
        return "\n".join(lines)


def compare_backends(exp: Experiment) -> Comparison:
    """Run both backends on the same frozen inputs and compare them (see the module notes)."""
    from simulation.engine import run_experiment

    exp = frozen_inputs(exp)
    tff = run_tff(exp)
    flower = run_experiment(exp, keep_round_weights=True)
    rows = []
    for r, (fw, tw, ta) in enumerate(zip(flower.round_weights, tff.weights, tff.accuracy,
                                         strict=True), start=1):
        diff = max(float(np.max(np.abs(np.asarray(fw[k], np.float64) - tw[k]))) for k in fw)
        fa = float(flower.rows[r - 1]["accuracy"])
        ta = round(ta, 10)  # the results file's precision
        rows.append({"round": r, "flower_accuracy": fa, "tff_accuracy": ta,
                     "accuracy_diff": fa - ta, "max_abs_weight_diff": diff})
    out = exp.out_dir()
    (out / "comparison.json").write_text(json.dumps(rows, indent=1))
    with (out / "comparison.csv").open("w") as fh:
        fh.write(",".join(rows[0]) + "\n")
        fh.writelines(",".join(str(v) for v in r.values()) + "\n" for r in rows)
    _plot(rows, out / "comparison.png")
    return Comparison(rows, out)


def _plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    rounds = [r["round"] for r in rows]
    a.plot(rounds, [r["flower_accuracy"] for r in rows], label="Flower (EdgeFleet)")
    a.plot(rounds, [r["tff_accuracy"] for r in rows], "--", label="TFF reference")
    a.set_xlabel("round")
    a.set_ylabel("test accuracy")
    a.legend()
    a.grid(alpha=0.3)
    b.semilogy(rounds, [max(r["max_abs_weight_diff"], 1e-12) for r in rows])
    b.set_xlabel("round")
    b.set_ylabel("max |Δw|")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
