"""The first whole fleet, on this machine: server, initial plan, agents, SuperNodes, Flower rounds.

:func:`run_fleet` (``edgefleet sim fleet``) runs every piece of EdgeFleet as real processes on
127.0.0.1, bounded in time, and stops all of them before it returns:

1. **server** — ``edgefleet server run`` on a fresh SQLite database and artifact store in the
   work dir, with a generated admin key and enrolment token;
2. **initial plan** — a digits MLP authored with TensorFlow (``edgefleet model build``, in a
   child process: TensorFlow never loads here), trained briefly on the device runtime on a small
   central share of the training split, published as version 1 with alias ``production``;
3. **agents** — one ``edgefleet agent run`` per device, each enrolled with its own data dir; it
   pulls its assignment (v1) from the server; the fleet then acts as the device's application:
   it posts the device's labelled examples (a Dirichlet label-skewed share, inputs shifted on
   the devices in ``shifts``) and inference traffic to the agent's local endpoint, and waits
   until every device's drift summaries reached the server;
4. **federation** — a SuperLink and one SuperNode per agent whose ``data-dir`` node config is
   that agent's data dir; ``flwr run`` of the app in ``aggregation/flower_app`` (the ServerApp
   ``aggregation.server_app``, the agent's ClientApp ``edge_client.flower_client``) with a
   server-side holdout so the canary gate can decide; the run's real status from ``flwr ls``;
5. **summary** — versions with lineage and holdout accuracy, round summaries, drift per device
   (the server's drift routes), refused updates, aliases: a :class:`FleetReport`.

The fleet fails (``report.ok`` false) when the Flower run did not complete or published no new
version. Clean-up: see :mod:`simulation.processes` (process groups, ``atexit``, signals).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

from edgefleet.datasets import Dataset
from edgefleet.run_settings import DEFAULTS, RunSettings
from simulation.errors import FleetError, Interrupted
from simulation.fleet_devices import AgentProcess, make_shares, start_agents
from simulation.fleet_flower import (
    Federation,
    flwr_run,
    round_lines,
    run_status,
    start_federation,
)
from simulation.fleet_report import DeviceRow, FleetReport, VersionRow
from simulation.fleet_server import AdminClient, ServerHandle, start_server
from simulation.partition import Shift
from simulation.processes import ProcessSupervisor

DEFAULT_APP = Path(__file__).resolve().parents[1] / "aggregation" / "flower_app"
RUN_NAME = "fleet"
FIRST_CONTACT_S = 90.0  # deadline to wait for the nodes and for their first query replies


def default_shifts(n_devices: int) -> dict[int, Shift]:
    """Device 0 sees brighter inputs; with four or more devices, the last one noisy inputs."""
    shifts: dict[int, Shift] = {0: "brightness"}
    if n_devices >= 4:
        shifts[n_devices - 1] = "noise"
    return shifts


@dataclass
class FleetConfig:
    """How the fleet runs; defaults in brackets.

    Parameters
    ----------
    workdir : Path or None [None]
        Where everything goes; ``None``: ``./var/fleet-<timestamp>``.
    n_agents : int [4]
        Devices, each an agent process plus a SuperNode.
    rounds : int [3]
        Federated rounds.
    model : str ["digits"]
        Registry model name.
    alpha : float [0.5]
        Dirichlet concentration of the label skew.
    shifts : dict or None [None]
        Device index → input shift; ``None``: :func:`default_shifts`.
    central_fraction, initial_epochs, initial_lr : [0.1, 6, 0.1]
        The initial model: share of the training split trained on centrally, and how.
    traffic : int [300]
        Inference requests' rows per device (the drift tests need >= 200).
    strategy, selection : [the run settings' default, "drift"]
        Aggregation strategy and selection policy of the run.
    base_epochs, lr, min_reports : [2, 0.1, the run settings' default]
        Local epochs, learning rate, fewest valid updates per round (the fleet trains longer
        and faster than a run's defaults: a few rounds must show progress).
    max_extra_epochs : int [2]
        Extra local epochs of a drifted node at score 1: fewer than the run settings' measured
        default (6), so that the fleet's few rounds on one machine stay short.
    gate_max_drop, canary_rollout_percent : [the run settings' defaults]
        The canary gate (see :class:`edgefleet.run_settings.RunKnobs`).
    eligibility : str ["always"]
        The agents' ClientApp eligibility (``"always"``: every simulated device may train —
        on one machine the load average is the fleet's own; ``"device"``: the real probes).
    extra_nodes : list of dict [[]]
        Node configs of extra SuperNodes without an agent (tests add adversarial nodes).
    app_dir : Path [aggregation/flower_app]
        The Flower app run.
    seed : int [0]
        Seeds the data shares, the plan's initial weights and the selection.
    timeout_s : float [900]
        Upper bound of the whole fleet; each step gets what is left.
    loop : bool [False]
        The whole loop (:mod:`simulation.fleet_loop`): devices start clean, ``shifts`` are
        injected after start, the drift controller starts the federated run, its candidate is
        rolled out in steps of 25, 50, 100 % of the fleet and promoted on evidence, then a
        scrambled candidate is rolled back. ``False``: the devices are shifted from the start
        and one federated run follows (the first fleet). ``edgefleet sim fleet`` runs the loop
        unless ``--no-loop``.
    bake_s : float [8]
        The loop's rollout steps: seconds each rollout step bakes before its guards decide.
    """

    workdir: Path | None = None
    n_agents: int = 4
    rounds: int = 3
    model: str = "digits"
    alpha: float = 0.5
    shifts: dict[int, Shift] | None = None
    central_fraction: float = 0.1
    initial_epochs: int = 6
    initial_lr: float = 0.1
    traffic: int = 300
    strategy: str = DEFAULTS.strategy
    selection: str = "drift"
    base_epochs: int = 2
    max_extra_epochs: int = 2
    lr: float = 0.1
    min_reports: int = DEFAULTS.min_reports
    gate_max_drop: float = DEFAULTS.gate_max_drop
    canary_rollout_percent: float = DEFAULTS.canary_rollout_percent
    eligibility: str = "always"
    extra_nodes: list[dict[str, str]] = field(default_factory=list)
    app_dir: Path = DEFAULT_APP
    seed: int = 0
    timeout_s: float = 900.0
    loop: bool = False
    bake_s: float = 8.0

    def __post_init__(self) -> None:
        if self.n_agents < 1 or self.rounds < 1:
            raise FleetError("need at least one agent and one round")
        if self.min_reports > self.n_agents + len(self.extra_nodes):
            raise FleetError(f"min_reports={self.min_reports} exceeds the number of nodes")
        # refuse bad run settings now, not after the server and the agents started
        fleet_run_settings(self, "http://127.0.0.1", self.n_agents + len(self.extra_nodes),
                           Path("holdout.npz"))


class _Clock:
    def __init__(self, timeout_s: float, timings: dict[str, float]) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + timeout_s
        self.timings = timings
        self._mark = self.start

    def left(self, cap: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FleetError("the fleet's time budget is spent")
        return min(cap, left)

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.timings[phase] = round(now - self._mark, 1)
        self._mark = now


def run_fleet(config: FleetConfig) -> FleetReport:
    """Run the fleet described by ``config``; see the module notes. Never leaves a process."""
    workdir = (config.workdir or Path("var") / f"fleet-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    report = FleetReport(workdir=workdir, logs=workdir / "logs", model=config.model)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    sup = ProcessSupervisor(report.logs, env)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        sup.handle_signals()
    clock = _Clock(config.timeout_s, report.timings)
    try:
        _run(config, sup, clock, report)
    except FleetError as exc:
        report.failure = str(exc)
    finally:
        sup.remember_descendants()
        sup.close()
        report.pids = sorted(pid for pid, _ in sup.seen)
        report.survivors = [pid for pid, _ in sup.survivors()]
        report.timings["total"] = round(time.monotonic() - clock.start, 1)
    return report


def _run(config: FleetConfig, sup: ProcessSupervisor, clock: _Clock, report: FleetReport) -> None:
    from aggregation.evaluation import Holdout
    from edgefleet.datasets import load_dataset

    ds = load_dataset("digits", seed=config.seed)
    workdir = report.workdir
    server = start_server(sup, workdir / "server", timeout_s=clock.left(90))
    clock.lap("server")

    shifts = default_shifts(config.n_agents) if config.shifts is None else config.shifts
    central, shares = make_shares(ds, config.n_agents, central_fraction=config.central_fraction,
                                  alpha=config.alpha, shifts={} if config.loop else shifts,
                                  traffic=config.traffic, seed=config.seed)
    holdout = workdir / "holdout.npz"
    Holdout(ds.x_test, ds.y_test).save(holdout)
    plan_dir = workdir / "plan-v1"
    report.initial_accuracy = _initial_plan(sup, clock, config, plan_dir, ds.x_train[central],
                                            ds.y_train[central], ds.x_test, ds.y_test)
    with AdminClient(server.url, server.admin_key) as admin:
        admin.publish_plan(config.model, plan_dir, description="initial: central share",
                           metrics={"holdout.accuracy": report.initial_accuracy})
    clock.lap("initial plan")

    agents = start_agents(sup, server, config.model, shares, workdir / "devices",
                          timeout_s=clock.left(120))
    for agent in agents:
        agent.feed(config.model)
    drift = _wait_for_drift(server, config.model, agents, config.traffic, clock.left(90))
    clock.lap("agents")

    nodes = [{"data-dir": str(a.data_dir), "eligibility": config.eligibility} for a in agents]
    nodes += config.extra_nodes
    fed = start_federation(sup, workdir / "flower", nodes, admin_key=server.admin_key,
                           timeout_s=clock.left(60))
    run_cfg = fleet_run_settings(config, server.url, len(nodes), holdout).run_config()
    if config.loop:
        injected: dict[str, Shift] = {shares[i].device_id: shift for i, shift in shifts.items()
                                      if i < len(shares) and shift != "none"}
        _whole_loop(config, sup, clock, report, server, agents, fed, run_cfg, ds, plan_dir,
                    injected)
        return
    try:
        log = flwr_run(sup, fed, config.app_dir, run_cfg, timeout_s=clock.left(600))
    except Interrupted:
        raise
    except FleetError:  # flwr run failed: still say what the SuperLink knows
        report.run_status, _ = run_status(sup, fed)
        report.rounds = round_lines(sup.log_dir / "flwr-run.log")
        raise
    report.run_status, details = run_status(sup, fed)
    report.rounds = round_lines(log)
    clock.lap("federated run")
    _summarise(report, server, config.model, agents, drift)
    if not report.run_status.startswith("finished:completed"):
        raise FleetError(f"the Flower run ended {report.run_status} {details} (log {log})")
    if not report.new_versions:
        raise FleetError(f"the run published no new version (log {log})")
    report.ok = True


def _whole_loop(config: FleetConfig, sup: ProcessSupervisor, clock: _Clock, report: FleetReport,
                server: ServerHandle, agents: list[AgentProcess], fed: Federation,
                run_cfg: dict[str, str | int | float | bool], ds: Dataset, plan_dir: Path,
                injected: dict[str, Shift]) -> None:
    """The loop (:func:`simulation.fleet_loop.run_loop`), then the summary and its checks."""
    from simulation.fleet_loop import LoopContext, LoopReport, run_loop

    def start_run() -> Path:
        log = flwr_run(sup, fed, config.app_dir, run_cfg, timeout_s=clock.left(600))
        report.run_status, _ = run_status(sup, fed)
        report.rounds = round_lines(log)
        return log

    ctx = LoopContext(model=config.model, url=server.url, admin_key=server.admin_key,
                      agents=agents, ds=ds, shifts=injected, start_run=start_run,
                      plan_dir=plan_dir, left=clock.left, bake_s=config.bake_s, seed=config.seed)
    report.loop = LoopReport()  # kept when a stage fails: the summary says how far it got
    try:
        run_loop(ctx, report.loop)
    finally:
        clock.lap("loop")
        _summarise(report, server, config.model, agents, {}, injected)
    if not report.run_status.startswith("finished:completed"):
        raise FleetError(f"the Flower run ended {report.run_status}")
    report.ok = True


def fleet_run_settings(config: FleetConfig, server_url: str, n_nodes: int, holdout: Path
                       ) -> RunSettings:
    """The federated run's settings: the fleet's choices over the run settings' defaults.

    Every node trains each round; the deadlines to wait for the nodes and their query replies
    are raised to upper bounds, since the first message of a run starts a ClientApp process on
    every node.
    """
    try:
        return RunSettings(
            server_url=server_url, model=config.model, run_name=RUN_NAME,
            num_rounds=config.rounds, strategy=config.strategy, selection=config.selection,
            target_clients=n_nodes, min_reports=config.min_reports, min_nodes=n_nodes,
            holdout_path=str(holdout), base_epochs=config.base_epochs, lr=config.lr,
            max_extra_epochs=config.max_extra_epochs,
            gate_max_drop=config.gate_max_drop,
            # in the loop the rollout, not the canary alias, takes the candidate to the fleet
            canary_rollout_percent=0.0 if config.loop else config.canary_rollout_percent,
            seed=config.seed,
            wait_for_nodes_s=FIRST_CONTACT_S, query_timeout_s=FIRST_CONTACT_S)
    except ValueError as exc:  # pydantic's ValidationError
        raise FleetError(f"the fleet's run settings are invalid: {exc}") from exc


def _initial_plan(sup: ProcessSupervisor, clock: _Clock, config: FleetConfig, plan_dir: Path,
                  x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
                  ) -> float:
    """Author the plan (TensorFlow, child process), train it briefly here on the device runtime,
    write its weights back; return its holdout accuracy."""
    from edgefleet.plan import save_weights
    from edgefleet.runtime import WEIGHTS_FILE, PlanRuntime

    code, tail = sup.run("build-plan", [
        sys.executable, "-m", "edgefleet_cli", "model", "build", "--out", str(plan_dir),
        "--dataset", "digits", "--arch", "mlp", "--seed", str(config.seed),
        "--split-seed", str(config.seed)], timeout_s=clock.left(300))
    if code != 0:
        raise FleetError(f"building the initial plan failed:\n{tail}")
    runtime = PlanRuntime.from_dir(plan_dir)
    runtime.fit(x, y, epochs=config.initial_epochs, lr=config.initial_lr, seed=config.seed)
    save_weights(plan_dir / WEIGHTS_FILE, runtime.get_weights(),
                 plan_sha256=runtime.manifest.plan_sha256)
    return float(runtime.evaluate(x_test, y_test).accuracy)


def _wait_for_drift(server: ServerHandle, model: str, agents: list[AgentProcess],
                    traffic: int, timeout_s: float) -> dict[str, dict[str, object]]:
    """Wait until the server's drift report of v1 counts every device's traffic."""
    deadline = time.monotonic() + timeout_s
    with AdminClient(server.url, server.admin_key) as admin:
        while True:
            drift = admin.device_drift(model, 1)
            counted = {a.share.device_id: int(str(drift.get(a.share.device_id, {})
                                                   .get("n_samples", 0))) for a in agents}
            if all(n >= traffic for n in counted.values()):
                return drift
            if time.monotonic() > deadline:
                raise FleetError(f"telemetry did not reach the server in {timeout_s:.0f} s: "
                                 f"samples counted per device {counted}")
            time.sleep(1.0)


def _summarise(report: FleetReport, server: ServerHandle, model: str,
               agents: list[AgentProcess], drift: dict[str, dict[str, object]],
               injected: dict[str, Shift] | None = None) -> None:
    with AdminClient(server.url, server.admin_key) as admin:
        report.versions = [VersionRow.from_info(v) for v in admin.versions(model)]
        report.aliases = {name: a.version for name, a in admin.aliases(model).items()}
        if not drift:
            drift = admin.device_drift(model, 1)
    n_classes = 10
    for agent in agents:
        try:
            active = (agent.status().get("active") or {}).get("version")
        except (FleetError, httpx.HTTPError):
            active = None
        s = agent.share
        report.devices.append(DeviceRow(
            device_id=s.device_id, data_dir=agent.data_dir,
            shift=(injected or {}).get(s.device_id, s.shift), examples=len(s.y),
            class_counts=s.class_counts(n_classes), answered=dict(agent.answered),
            drift=dict(drift.get(s.device_id, {})) or None, active_version=active))
