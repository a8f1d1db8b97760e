"""The fleet's whole loop: drift appears, the controller trains, rollouts promote or roll back.

:func:`run_loop` drives a running fleet (server, agents, SuperLink and SuperNodes, all real
processes, see :mod:`simulation.fleet`) through the loop the README's main command shows:

1. **steady** — every device's application sends clean traffic
   (:class:`simulation.fleet_devices.TrafficPump`) on the production version;
2. **drift** — once the controller has seen the fleet healthy (armed), the devices in ``shifts``
   start seeing shifted inputs (brightness, noise) in their traffic and in new labelled examples;
3. **controller** — :class:`aggregation.controller.DriftController` polls the server's fleet
   drift through :class:`aggregation.registry_client.RegistryClient` and, when the fleet crosses
   its threshold, starts a federated run (:class:`FleetRunLauncher`: ``flwr run`` on the fleet's
   SuperLink) that publishes new versions; its canary gate picks the candidate;
4. **rollout** — the candidate goes out in steps of 25, 50 and 100 % of the fleet
   (``POST /api/v1/rollouts``, waves by the devices' ``ring`` label, :func:`staged_body`); the
   server's rollout controller advances each step on the devices' evidence and promotes it;
5. **bad candidate** — the new production's weights, scrambled (every tensor's entries
   permuted), are published and started the same way; the guards must roll it back;
6. **accuracy** — version 1 and the final production on the digits test split, shifted as each
   device's inputs are (:func:`accuracy_rows`).

Every step is read back from the running system (the registry's rollouts and their timelines,
the agents' status) into :class:`LoopReport`; the timeline is in seconds since the loop began.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgefleet.datasets import Dataset
from simulation.errors import FleetError
from simulation.fleet_devices import STEP_SHARES, AgentProcess, TrafficPump
from simulation.partition import Shift, apply_shift

log = logging.getLogger(__name__)

TERMINAL = ("promoted", "rolled_back", "aborted")


@dataclass(frozen=True)
class TimelineEntry:
    """One thing that happened, ``at`` seconds after the loop began."""

    at: float
    what: str
    detail: str = ""


@dataclass(frozen=True)
class AccuracyRow:
    """A device's test accuracy under its own input shift, before and after the loop."""

    device_id: str
    shift: str
    before: float
    after: float


@dataclass
class RolloutRecord:
    """A rollout as the registry reported it at its end."""

    id: int
    candidate: int
    state: str
    events: list[dict[str, Any]] = field(default_factory=list)
    devices_on_candidate: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """The state and the message of the rollout's last event (a rollback's reason)."""
        last = self.events[-1]["message"] if self.events else "no event"
        return f"{self.state}: {last}"


@dataclass
class LoopReport:
    """What :func:`run_loop` saw (see the module notes)."""

    timeline: list[TimelineEntry] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    aliases_after_run: dict[str, int] = field(default_factory=dict)
    good: RolloutRecord | None = None
    bad: RolloutRecord | None = None
    accuracy: list[AccuracyRow] = field(default_factory=list)
    before_version: int = 1
    after_version: int | None = None
    pump_errors: list[str] = field(default_factory=list)
    failure: str | None = None
    _t0: float = field(default_factory=time.monotonic)

    def note(self, what: str, detail: str = "") -> None:
        entry = TimelineEntry(round(time.monotonic() - self._t0, 1), what, detail)
        self.timeline.append(entry)
        log.info("loop +%.1fs %s %s", entry.at, what, detail)


@dataclass
class FleetRunLauncher:
    """The controller's launcher: one federated run on the fleet's SuperLink, waited for.

    ``start`` is :func:`simulation.fleet_flower.flwr_run` bound to the fleet; it returns the
    path of the run's log.
    """

    start: Callable[[], Path]
    report: LoopReport
    describe: Callable[[], str] = lambda: ""
    logs: list[Path] = field(default_factory=list)

    def __call__(self, model: str, reason: str) -> str:
        if reason == "drift":
            self.report.note("drift detected", self.describe())
        self.report.note("run started", f"federated run of {model} ({reason})")
        path = self.start()
        self.logs.append(path)
        name = f"{model}-{reason}-{len(self.logs)}"
        self.report.note("run finished", name)
        return name


def evidence_lines(evidence: dict[str, Any] | None) -> list[str]:
    """A rollout decision's evidence (``RolloutEventInfo.evidence``) in a few lines: each
    guard's decision and reason, then what each side's figures rest on (devices reporting,
    labelled examples, requests)."""
    evidence = evidence or {}
    out = [f"guard {g.get('kind', '?')} {g.get('decision', '?')}: {g.get('reason', '')}"
           for g in evidence.get("guards") or []]
    figures = evidence.get("evidence") or {}
    sides = []
    for side in ("candidate", "baseline"):
        f = figures.get(side)
        if isinstance(f, dict):
            sides.append(f"{side} v{f.get('version', '?')}: {f.get('devices', 0)} devices, "
                         f"{f.get('device_labelled', 0)} labelled "
                         f"({f.get('device_correct', 0)} correct), "
                         f"{f.get('requests', 0)} requests")
    if sides:
        elapsed = evidence.get("elapsed_s")
        out.append("; ".join(sides) + ("" if elapsed is None else f" ({elapsed:g} s into the "
                                                                  "step)"))
    return out


class RolloutClient:
    """The rollout calls of the REST API (admin)."""

    def __init__(self, url: str, admin_key: str) -> None:
        self._http = httpx.Client(base_url=url + "/api/v1", timeout=60,
                                  headers={"X-Admin-Key": admin_key})

    def close(self) -> None:
        self._http.close()

    def _ok(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            raise FleetError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: "
                             f"{r.text[:500]}")
        return r.json()

    def start(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._ok(self._http.post("/rollouts", json=body)))

    def get(self, rollout_id: int) -> dict[str, Any]:
        return dict(self._ok(self._http.get(f"/rollouts/{rollout_id}")))

    def history(self, rollout_id: int) -> list[dict[str, Any]]:
        return list(self._ok(self._http.get(f"/rollouts/{rollout_id}/history")))

    def wait(self, rollout_id: int, timeout_s: float, report: LoopReport) -> dict[str, Any]:
        """Poll until the rollout ends (or ``timeout_s`` passed), noting each new event of its
        timeline with the guards' evidence behind it; the rollout as last read."""
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while True:
            info = self.get(rollout_id)
            for event in self.history(rollout_id):
                if event["id"] not in seen:
                    seen.add(event["id"])
                    report.note(f"rollout {rollout_id} {event['kind']}",
                                "\n".join([f"step {event['step']}: {event['message']}",
                                           *evidence_lines(event.get("evidence"))]))
            if info["state"] in TERMINAL or time.monotonic() > deadline:
                return info
            time.sleep(1.0)


def staged_body(model: str, candidate: int, reason: str, *, bake_s: float,
                timeout_s: float) -> dict[str, Any]:
    """A staged rollout of ``candidate`` to :data:`STEP_SHARES` (25, 50, 100 %) of the fleet,
    each step baked ``bake_s``, guarded by the devices' labelled accuracy (at most 5 points
    below production's, 50 examples each side at least) and by device failures (any
    smoke-test failure, crash or rollback).

    The steps are ``waves`` by the devices' ``ring`` label
    (:func:`simulation.fleet_devices.ring_of`), not ``canary`` percentages: a canary's
    membership is a hash of the device id onto [0, 100), and a fleet of a few devices often has
    none below 25 (three devices: (3/4)^3 = 42 % of the model salts), so that step could never
    see the candidate on a device and timed out into a rollback.
    """
    steps: list[dict[str, Any]] = [
        {"labels": {"ring": str(k)}, "bake_s": bake_s, "timeout_s": timeout_s}
        for k in range(1, len(STEP_SHARES))]
    steps.append({"bake_s": bake_s, "timeout_s": timeout_s})  # the last wave: every device
    return {
        "model": model, "candidate": candidate, "strategy": "waves", "reason": reason,
        "steps": steps,
        "guards": [{"kind": "device_accuracy", "margin": 0.05, "min_samples": 50},
                   {"kind": "device_failures", "margin": 0, "min_samples": 1}],
    }


def scrambled(weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Every tensor's entries permuted: the same values, the same shapes, a broken model."""
    rng = np.random.default_rng(seed)
    return {k: rng.permutation(v.ravel()).reshape(v.shape).astype(v.dtype)
            for k, v in weights.items()}


def accuracy_rows(agents: list[AgentProcess], shifts: dict[str, Shift], ds: Dataset,
                  plan_dir: Path, before: dict[str, np.ndarray], after: dict[str, np.ndarray],
                  seed: int) -> list[AccuracyRow]:
    """Each device's accuracy on the test split shifted as its inputs are, for two weights."""
    from edgefleet.runtime import PlanRuntime

    runtime = PlanRuntime.from_dir(plan_dir)
    rows = []
    for agent in agents:
        shift = shifts.get(agent.share.device_id, "none")
        x = apply_shift(ds.x_test, shift, seed=seed + 600 + agent.share.index)
        scores = []
        for weights in (before, after):
            runtime.set_weights(weights)
            scores.append(float(runtime.evaluate(x, ds.y_test).accuracy))
        rows.append(AccuracyRow(agent.share.device_id, shift, scores[0], scores[1]))
    return rows


@dataclass
class LoopContext:
    """What :func:`run_loop` drives: the running fleet and the loop's settings."""

    model: str
    url: str
    admin_key: str
    agents: list[AgentProcess]
    ds: Dataset
    shifts: dict[str, Shift]
    start_run: Callable[[], Path]
    plan_dir: Path
    left: Callable[[float], float]
    bake_s: float = 8.0
    step_timeout_s: float = 180.0
    interval_s: float = 3.0
    seed: int = 0


def run_loop(ctx: LoopContext, loop: LoopReport | None = None) -> LoopReport:
    """The loop of the module notes, noted in ``loop`` (a new report by default); raises
    :class:`FleetError` when a stage fails, after noting why in ``loop.failure``."""
    from aggregation.registry_client import RegistryClient

    loop = LoopReport() if loop is None else loop
    pump = TrafficPump(ctx.agents, ctx.model, seed=ctx.seed).start()
    registry = RegistryClient(ctx.url, ctx.admin_key, timeout=60)
    rollouts = RolloutClient(ctx.url, ctx.admin_key)
    try:
        _drift_and_train(ctx, loop, pump, registry)
        candidate = _candidate(ctx, loop, registry)
        loop.good = _roll_out(ctx, loop, rollouts, candidate, "the federated run's candidate")
        if loop.good.state != "promoted":
            raise FleetError(f"the candidate v{candidate} was not promoted ({loop.good.outcome})")
        broken = _publish_scrambled(ctx, loop, registry, candidate)
        loop.bad = _roll_out(ctx, loop, rollouts, broken, "scrambled weights (a broken model)")
        if loop.bad.state != "rolled_back":
            raise FleetError(f"the broken v{broken} was not rolled back ({loop.bad.outcome})")
        loop.after_version = registry.production_version(ctx.model)
        assert loop.after_version is not None
        loop.accuracy = accuracy_rows(
            ctx.agents, ctx.shifts, ctx.ds, ctx.plan_dir, _weights(registry, ctx.model, 1),
            _weights(registry, ctx.model, loop.after_version), ctx.seed)
    except FleetError as exc:
        loop.failure = str(exc)
        raise
    finally:
        pump.stop()
        loop.pump_errors = pump.errors[:20]
        registry.close()
        rollouts.close()
    return loop


def _drift_and_train(ctx: LoopContext, loop: LoopReport, pump: TrafficPump,
                     registry: Any) -> None:
    """Poll the controller; inject the drift once it is armed; return once it started a run.

    The controller starts disarmed: it needs one healthy reading of the fleet before a drift
    may start a run, so a run can only follow the injected drift.
    """
    from datetime import UTC, datetime, timedelta

    from aggregation.controller import ControllerPolicy, ControllerState, DriftController

    def describe() -> str:
        drift = registry.fleet_drift(ctx.model)
        if drift is None:
            return "no reading"
        return (f"v{drift.version}: {', '.join(drift.signals) or 'no signal'} "
                f"(share of features drifted {drift.score:.2f}) after "
                f"{len(loop.decisions) + 1} readings")

    launcher = FleetRunLauncher(ctx.start_run, loop, describe)
    controller = DriftController(
        ctx.model, registry, launcher,
        policy=ControllerPolicy(schedule_every=None, cooldown=timedelta(0)),
        state=ControllerState(since=datetime.now(UTC), armed=False))
    loop.note("steady", f"{len(ctx.agents)} devices on production v1, clean traffic")
    injected = False
    while not controller.runs:
        decision = controller.step()
        loop.decisions.append(f"{decision.reason}: {decision.detail}")
        if decision.start:
            break
        state = controller.state
        if not injected and state is not None and state.armed:
            loop.note("fleet healthy", f"controller armed ({decision.detail})")
            pump.inject(ctx.shifts)
            injected = True
            loop.note("drift injected", ", ".join(f"{d}: {s}" for d, s in ctx.shifts.items()))
        time.sleep(ctx.left(ctx.interval_s))
    loop.runs = list(controller.runs)


def _candidate(ctx: LoopContext, loop: LoopReport, registry: Any) -> int:
    """The version the run's canary gate chose (``canary``), after noting every new version
    and the aliases as the run left them (``loop.aliases_after_run``)."""
    from simulation.fleet_server import AdminClient

    with AdminClient(ctx.url, ctx.admin_key) as admin:
        for v in admin.versions(ctx.model):
            if v.lineage.federated_round is not None:
                loop.note("version published",
                          f"v{v.version} (round {v.lineage.federated_round}, holdout accuracy "
                          f"{v.metrics.get('holdout.accuracy', float('nan')):.3f})")
    canary = registry.alias(ctx.model, "canary")
    production = registry.production_version(ctx.model)
    loop.aliases_after_run = {name: v for name, v in (
        ("production", production), ("canary", None if canary is None else canary.version))
        if v is not None}
    if canary is None or canary.version == production:
        raise FleetError("the run's canary gate passed no new version")
    loop.note("gate", f"canary -> v{canary.version}")
    return int(canary.version)


def _roll_out(ctx: LoopContext, loop: LoopReport, rollouts: RolloutClient, candidate: int,
              reason: str) -> RolloutRecord:
    started = rollouts.start(staged_body(ctx.model, candidate, reason, bake_s=ctx.bake_s,
                                         timeout_s=ctx.step_timeout_s))
    shares = "/".join(str(p) for p in STEP_SHARES)
    loop.note(f"rollout {started['id']} started", f"v{candidate} in waves {shares} %: {reason}")
    info = rollouts.wait(int(started["id"]), ctx.left(4 * ctx.step_timeout_s), loop)
    ended = info["state"] in TERMINAL
    loop.note(f"rollout {info['id']} {info['state']}", f"v{candidate}" + (
        "" if ended else f": still at step {info['step']} when the loop stopped waiting"))
    on = []
    for agent in ctx.agents:
        wait_until = time.monotonic() + (30 if ended else 0)
        while True:  # a device follows the final assignment on its next poll
            active = (agent.status().get("active") or {}).get("version")
            settled = (active == candidate) == (info["state"] == "promoted")
            if settled or time.monotonic() > wait_until:
                break
            time.sleep(1.0)
        if active == candidate:
            on.append(agent.share.device_id)
    return RolloutRecord(id=int(info["id"]), candidate=candidate, state=str(info["state"]),
                         events=rollouts.history(int(info["id"])), devices_on_candidate=on)


def _weights(registry: Any, model: str, version: int) -> dict[str, np.ndarray]:
    from edgefleet.plan import weights_from_bytes

    return dict(weights_from_bytes(registry.artifact(model, version, "weights")))


def _publish_scrambled(ctx: LoopContext, loop: LoopReport, registry: Any, parent: int) -> int:
    from edgefleet.wire import VersionLineage, VersionPublish

    manifest = registry.manifest(ctx.model, parent)
    weights = scrambled(_weights(registry, ctx.model, parent), ctx.seed)
    info = registry.publish_weights(
        ctx.model, weights,
        VersionPublish(description=f"v{parent} with scrambled weights (broken on purpose)",
                       plan_from_version=parent,
                       lineage=VersionLineage(parent_version=parent)),
        plan_sha256=manifest.plan_sha256)
    loop.note("broken version published", f"v{info.version}: v{parent}'s weights scrambled")
    return int(info.version)
