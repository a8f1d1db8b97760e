"""The drift-triggered controller: decides when a new federated run should start.

A run starts when

* the fleet's drift for the model **matters**: with an impact reading
  (:meth:`FleetDrift.from_impact`, ``server.drift.impact``) the share of devices whose inputs
  changed against their own baseline on the version they run, weighted by their
  labelled-accuracy drop (or their input effect where they have no labels), must reach its
  threshold (``edgefleet.drift.impact``); without one, the server's three verdicts (input
  drift, performance drift, label-prior shift, each with its thresholds and hysteresis) count.
  The controller is edge-triggered (:attr:`FleetDrift.triggered`): after a drift start it
  re-arms only once a reading says the fleet is healthy — which it does once the fleet runs the
  new version, whose per-device baselines start afresh (one crossing starts one run);
* or the **schedule** is due (``schedule_every`` after the last start, or after the controller
  started when nothing ran yet);

and never within ``cooldown`` of the previous start. :func:`decide` is the pure decision;
:class:`DriftController` polls a :class:`FleetDriftSource` (the server's fleet drift over HTTP,
:meth:`aggregation.registry_client.RegistryClient.fleet_drift`) and calls a
:class:`RunLauncher`, for a bounded number of iterations.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from aggregation.errors import FederationError, RunLaunchError, SettingsError
from edgefleet.drift.impact import FleetImpact

log = logging.getLogger(__name__)

Reason = Literal["drift", "schedule", "cooldown", "idle", "no-data"]


@dataclass(frozen=True)
class FleetDrift:
    """The fleet-level drift of one model version, as the server reports it.

    Parameters
    ----------
    model : str
        Model name.
    drifted : bool
        The server's input-drift verdict: the fleet crossed the model's drift threshold (with
        hysteresis).
    score : float (default: 0.0)
        Informational: the share of drifted features in the latest window.
    version : int or None (default: None)
        The model version the verdict is about.
    observed_at : datetime or None (default: None)
        End of the latest window behind the verdict.
    performance_drifted : bool (default: False)
        The server's performance-drift state: labelled accuracy below the version's validation
        accuracy (with hysteresis).
    label_shift : bool (default: False)
        The server's label-prior-shift state.
    impact : float or None (default: None)
        The fleet's drift weighed by what it costs (``edgefleet.drift.impact``: the share of
        devices whose change against their own baseline on this version matters, weighted by
        their labelled-accuracy drop or input effect). When present, it decides alone.
    impact_triggered : bool (default: False)
        Whether ``impact`` reached its threshold.
    """

    model: str
    drifted: bool
    score: float = 0.0
    version: int | None = None
    observed_at: datetime | None = None
    performance_drifted: bool = False
    label_shift: bool = False
    impact: float | None = None
    impact_triggered: bool = False

    @property
    def signals(self) -> list[str]:
        """The drifted signals, in the server's names (``input``, ``performance``, ...).

        With an ``impact`` reading only ``impact`` counts: the server's verdicts say *whether*
        the inputs moved (a +1 grey-level offset crosses them like a +8 one does), the impact
        says whether it matters.
        """
        if self.impact is not None:
            return ["impact"] if self.impact_triggered else []
        flags = (
            ("input", self.drifted),
            ("performance", self.performance_drifted),
            ("label_prior", self.label_shift),
        )
        return [name for name, on in flags if on]

    @property
    def triggered(self) -> bool:
        """Any signal drifted: what starts a run."""
        return bool(self.signals)

    @classmethod
    def from_score(
        cls, model: str, score: float, threshold: float, *, version: int | None = None,
        observed_at: datetime | None = None,
    ) -> FleetDrift:
        """A verdict from a plain score and threshold (``drifted = score >= threshold``)."""
        return cls(model, score >= threshold, score, version, observed_at)

    @classmethod
    def from_impact(cls, model: str, impact: FleetImpact, *, version: int | None = None,
                    observed_at: datetime | None = None) -> FleetDrift:
        """A reading from :func:`edgefleet.drift.impact.fleet_impact` (score: share affected)."""
        return cls(model, impact.triggered, impact.share_affected, version, observed_at,
                   impact=impact.impact, impact_triggered=impact.triggered)


class FleetDriftSource(Protocol):
    """Where the controller reads fleet drift from (the registry client, or a test double)."""

    def fleet_drift(self, model: str) -> FleetDrift | None:
        """The model's current fleet drift; ``None`` when the server has none yet."""
        ...


class RunLauncher(Protocol):
    """Starts a federated run for ``model``; returns an identifier of the run."""

    def __call__(self, model: str, reason: str) -> str: ...


@dataclass(frozen=True)
class ControllerPolicy:
    """When to start runs.

    Parameters
    ----------
    schedule_every : timedelta or None (default: 1 day)
        Start a run this long after the previous start; ``None`` disables the schedule.
    cooldown : timedelta (default: 1 hour)
        No run starts within this long of the previous start, whatever the trigger.
    """

    schedule_every: timedelta | None = timedelta(days=1)
    cooldown: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.schedule_every is not None and self.schedule_every <= timedelta(0):
            raise SettingsError("schedule_every must be positive")
        if self.cooldown < timedelta(0):
            raise SettingsError("cooldown must be >= 0")


@dataclass(frozen=True)
class ControllerState:
    """What the controller remembers between decisions.

    ``armed`` is cleared by a start while the fleet is drifted and set again by the first
    healthy reading; ``started_version`` is the version the fleet drifted on at that start. A
    run publishes a new version trained on the drifted data, whose own baselines make the fleet
    healthy once it runs it: that reading re-arms the controller for the next drift.
    """

    since: datetime
    last_start: datetime | None = None
    armed: bool = True
    started_version: int | None = None


@dataclass(frozen=True)
class Decision:
    """One decision: start a run or not, and why."""

    start: bool
    reason: Reason
    detail: str = ""


def decide(
    policy: ControllerPolicy, state: ControllerState, now: datetime, drift: FleetDrift | None
) -> tuple[Decision, ControllerState]:
    """Decide whether to start a run now; return the decision and the next state (pure)."""
    armed = state.armed or (drift is not None and not drift.triggered)
    drift_due = drift is not None and drift.triggered and armed
    reference = state.last_start or state.since
    schedule_due = policy.schedule_every is not None and now - reference >= policy.schedule_every
    state = replace(state, armed=armed)
    if not (drift_due or schedule_due):
        if drift is None:
            return Decision(False, "no-data", "no fleet drift reported"), state
        why = ("still drifted, not re-armed" if drift.triggered
               else f"score {drift.score:.4g}" + _impact(drift))
        return Decision(False, "idle", why), state
    if state.last_start is not None and now - state.last_start < policy.cooldown:
        wait = policy.cooldown - (now - state.last_start)
        return Decision(False, "cooldown", f"{wait.total_seconds():.0f}s left"), state
    reason: Reason = "drift" if drift_due else "schedule"
    detail = (
        f"fleet drifted: {', '.join(drift.signals)} (score {drift.score:.4g})"
        if drift_due and drift is not None
        else f"schedule ({policy.schedule_every})"
    )
    # Any start consumes the drift trigger while the fleet is still drifted.
    still_drifted = drift is not None and drift.triggered
    return Decision(True, reason, detail), replace(
        state, last_start=now, armed=armed and not still_drifted,
        started_version=drift.version if drift is not None else state.started_version,
    )


@dataclass
class DriftController:
    """Poll fleet drift and start runs when :func:`decide` says so.

    Parameters
    ----------
    model : str
        The model to watch.
    source : FleetDriftSource
        Where fleet drift comes from.
    launcher : RunLauncher
        What starts a run.
    policy : ControllerPolicy (default: ControllerPolicy())
        Schedule, cooldown and re-arming.
    clock : Callable[[], datetime] (default: now in UTC)
        Injected for tests.
    sleep : Callable[[float], None] (default: time.sleep)
        Injected for tests.
    """

    model: str
    source: FleetDriftSource
    launcher: RunLauncher
    policy: ControllerPolicy = field(default_factory=ControllerPolicy)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    sleep: Callable[[float], None] = time.sleep
    state: ControllerState | None = None
    runs: list[str] = field(default_factory=list)

    def step(self) -> Decision:
        """Read the drift once, decide, and launch when due."""
        now = self.clock()
        state = self.state or ControllerState(since=now)
        try:
            drift = self.source.fleet_drift(self.model)
        except FederationError as exc:
            log.warning("fleet drift of %s unavailable: %s", self.model, exc)
            drift = None
        decision, next_state = decide(self.policy, state, now, drift)
        if decision.start:
            try:
                run = self.launcher(self.model, decision.reason)
            except FederationError as exc:
                log.error("starting a run of %s failed: %s", self.model, exc)
                self.state = state  # not started: keep the old state, retry next step
                return Decision(False, decision.reason, f"launch failed: {exc}")
            self.runs.append(run)
            log.info("started run %s of %s: %s", run, self.model, decision.detail)
        self.state = next_state
        return decision

    def run(self, *, max_iterations: int, interval_s: float = 60.0) -> list[Decision]:
        """Step ``max_iterations`` times, sleeping ``interval_s`` in between."""
        if max_iterations < 1:
            raise SettingsError("max_iterations must be >= 1")
        decisions = []
        for i in range(max_iterations):
            decisions.append(self.step())
            if i + 1 < max_iterations:
                self.sleep(interval_s)
        return decisions


@dataclass
class FlwrRunLauncher:
    """Start a run with ``flwr run <app> <superlink> --run-config ... --format json``.

    Each run gets a fresh ``run-name`` (``<model>-<reason>-<UTC timestamp>``), so its versions
    are told apart in the registry and a restart of *that* run resumes it.

    Parameters
    ----------
    app_dir : str
        The Flower app (the project with ``[tool.flwr.app]`` in its ``pyproject.toml``).
    superlink : str
        The SuperLink connection name (from ``$FLWR_HOME/config.toml``).
    run_config : Mapping[str, str | int | float | bool] (default: {})
        Extra run-config overrides (each key must exist in the app's run config).
    flwr : Sequence[str] (default: ("flwr",))
        The command that is Flower's CLI.
    timeout_s : float (default: 120.0)
        How long ``flwr run`` may take to *submit* the run.
    clock : Callable[[], datetime] (default: now in UTC)
        For the run name.
    """

    app_dir: str
    superlink: str
    run_config: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    flwr: Sequence[str] = ("flwr",)
    timeout_s: float = 120.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def __call__(self, model: str, reason: str) -> str:
        name = f"{model}-{reason}-{self.clock():%Y%m%dT%H%M%S}"
        config = {**self.run_config, "model": model, "run-name": name}
        pairs = " ".join(f"{k}={_toml(v)}" for k, v in config.items())
        argv = [*self.flwr, "run", self.app_dir, self.superlink, "--run-config", pairs,
                "--format", "json"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RunLaunchError(f"flwr run failed to start: {exc}") from exc
        out = _json_tail(proc.stdout)
        if proc.returncode != 0 or not out.get("success"):
            detail = (proc.stderr or proc.stdout).strip()[-500:]
            raise RunLaunchError(f"flwr run exited {proc.returncode}: {detail}")
        return f"{name} (flower run {out.get('run-id')})"


def _json_tail(text: str) -> dict[str, object]:
    """The JSON object ``flwr --format json`` ends its output with (on one line or indented
    over several, after any log lines); ``{}`` when there is none."""
    lines = text.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("{")]
    if not starts:
        return {}
    try:
        out = json.loads("\n".join(lines[starts[-1]:]))
    except json.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}


def _impact(drift: FleetDrift) -> str:
    return "" if drift.impact is None else f", impact {drift.impact:.3g}"


def _toml(value: str | int | float | bool) -> str:
    """A run-config value in TOML syntax."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a basic TOML string
