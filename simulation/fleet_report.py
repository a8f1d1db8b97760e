"""What a fleet run reports: versions and their lineage, rounds, drift per device, aliases, and
(for the whole loop) the timeline, the rollouts with their evidence and the accuracy per device.

:class:`FleetReport` is what :func:`simulation.fleet.run_fleet` returns; :meth:`FleetReport.render`
is the summary ``edgefleet sim fleet`` prints. Everything in it was read back from the running
system (the registry's versions and aliases, the server's drift routes, the agents' status,
``flwr ls`` and the ServerApp's log), not from what the fleet meant to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.wire import VersionInfo
from simulation.fleet_loop import evidence_lines

if TYPE_CHECKING:
    from simulation.fleet_loop import LoopReport, RolloutRecord


#: Under the devices table: what its verdict compares (the input verdict of the server's drift
#: report, :mod:`server.drift.report`, against the reference profile in v1's manifest, built
#: from the whole digits training split by ``edgefleet model build``).
DRIFT_LEGEND = (
    "verdict: each device's inputs against v1's reference profile (the whole training split);",
    "shift none can still read drift: a label-skewed share's inputs differ from that reference",
)


@dataclass(frozen=True)
class VersionRow:
    """One registry version as the summary shows it."""

    version: int
    parent: int | None
    run: str | None
    round: int | None
    clients: int | None
    strategy: str | None
    accuracy: float | None
    refused: int
    refused_reasons: dict[str, int]
    aliases: list[str]

    @classmethod
    def from_info(cls, v: VersionInfo) -> VersionRow:
        lineage = v.lineage
        report = v.hyperparameters.get("round") if isinstance(v.hyperparameters, dict) else None
        reasons = report.get("refused_reasons", {}) if isinstance(report, dict) else {}
        return cls(
            version=v.version, parent=lineage.parent_version, run=lineage.federated_run,
            round=lineage.federated_round, clients=lineage.num_clients,
            strategy=lineage.strategy, accuracy=v.metrics.get("holdout.accuracy"),
            refused=int(v.metrics.get("round.refused", 0)),
            refused_reasons={str(k): int(n) for k, n in dict(reasons).items()},
            aliases=sorted(v.aliases))


@dataclass(frozen=True)
class DeviceRow:
    """One device: its data, where its traffic was answered, its drift, what it runs now."""

    device_id: str
    data_dir: Path
    shift: str
    examples: int
    class_counts: list[int]
    answered: dict[str, int]
    drift: dict[str, Any] | None
    active_version: int | None


@dataclass
class FleetReport:
    """The outcome of one fleet run (see :func:`simulation.fleet.run_fleet`).

    Attributes
    ----------
    workdir, logs : Path
        The fleet's work dir and the directory of every process's log.
    model : str
        The registry model trained.
    ok : bool
        The run finished ``completed`` and published at least one new version.
    failure : str or None
        Why not, when not ``ok``.
    run_status : str
        The Flower run's status from ``flwr ls`` (``finished:completed``...).
    initial_accuracy : float or None
        Holdout accuracy of version 1 (trained centrally on a small share).
    versions : list of VersionRow
        Every version in the registry after the run.
    rounds : list of str
        The ServerApp's round summaries.
    devices : list of DeviceRow
        Every device of the fleet.
    aliases : dict
        Alias name → version.
    timings : dict
        Wall seconds per phase and ``total``.
    pids : list of int
        Every process the fleet started or saw spawned (all stopped by the end).
    survivors : list of int
        Processes still running after the clean-up (empty unless something went wrong).
    loop : LoopReport or None
        The whole loop's timeline, rollouts and accuracy (``None`` without the loop).
    """

    workdir: Path
    logs: Path
    model: str
    ok: bool = False
    failure: str | None = None
    run_status: str = "not started"
    initial_accuracy: float | None = None
    versions: list[VersionRow] = field(default_factory=list)
    rounds: list[str] = field(default_factory=list)
    devices: list[DeviceRow] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)
    loop: LoopReport | None = None

    @property
    def new_versions(self) -> list[VersionRow]:
        """Versions published by federated rounds."""
        return [v for v in self.versions if v.round is not None]

    def render(self) -> str:
        """The human summary (plain text, fixed-width tables)."""
        out = [f"fleet of {len(self.devices)} devices, model {self.model}: "
               f"{'OK' if self.ok else 'FAILED'} (flower run {self.run_status})"]
        if self.failure:
            out.append(f"  failure: {self.failure}")
        out += ["", "versions (registry):",
                f"  {'ver':>3} {'parent':>6} {'round':>5} {'clients':>7} {'strategy':<10} "
                f"{'accuracy':>8} {'refused':<16} aliases"]
        for v in self.versions:
            refused = (", ".join(f"{k}:{n}" for k, n in sorted(v.refused_reasons.items()))
                       or str(v.refused))
            out.append(f"  {v.version:>3} {_s(v.parent):>6} {_s(v.round):>5} {_s(v.clients):>7} "
                       f"{v.strategy or '-':<10} {_f(v.accuracy):>8} {refused:<16} "
                       f"{', '.join(v.aliases) or '-'}")
        out += ["", "rounds (ServerApp):"] + [f"  {line}" for line in self.rounds or ["(none)"]]
        out += ["", "devices (drift of version 1, from the server's drift routes):",
                f"  {'device':<16} {'shift':<10} {'labels':>6} {'traffic':<18} {'verdict':<12} "
                f"{'drifted':>7} {'max PSI':>8} {'joint':>8} {'runs':>5}"]
        for d in self.devices:
            drift = d.drift or {}
            answered = ", ".join(f"{k} {n}" for k, n in sorted(d.answered.items())) or "-"
            out.append(
                f"  {d.device_id:<16} {d.shift:<10} {d.examples:>6} {answered:<18} "
                f"{drift.get('verdict', '-'):<12} {_f(drift.get('share_drifted')):>7} "
                f"{_f(drift.get('max_psi')):>8} {_f(drift.get('joint_effect')):>8} "
                f"{'v' + _s(d.active_version):>5}")
        if self.devices:
            out += [f"  {line}" for line in DRIFT_LEGEND]
        if self.loop is not None:
            out += render_loop(self.loop)
        aliases = ", ".join(f"{k} -> v{v}" for k, v in sorted(self.aliases.items()))
        out += ["", f"aliases: {aliases or '(none)'}"]
        out.append("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        out.append(f"logs:    {self.logs}")
        if self.survivors:
            out.append(f"WARNING: processes still running: {self.survivors}")
        return "\n".join(out)


def render_loop(loop: LoopReport) -> list[str]:
    """The loop's part of the summary: timeline, rollouts with their evidence, accuracy."""
    out = ["", "timeline (seconds since the loop began):"]
    for e in loop.timeline:
        first, *rest = e.detail.splitlines() or [""]
        out.append(f"  {e.at:>7.1f}  {e.what:<26} {first}")
        out += [f"  {'':>7}  {'':<26} {line}" for line in rest]
    if loop.failure:
        out.append(f"  loop stopped: {loop.failure}")
    for name, record in (("good candidate", loop.good), ("broken candidate", loop.bad)):
        if record is not None:
            out += ["", *_render_rollout(name, record)]
    if loop.accuracy:
        out += ["", f"accuracy on the digits test split, shifted as each device's inputs "
                    f"(v{loop.before_version} before -> v{loop.after_version} after):",
                f"  {'device':<16} {'shift':<10} {'before':>7} {'after':>7} {'change':>7}"]
        for a in loop.accuracy:
            out.append(f"  {a.device_id:<16} {a.shift:<10} {a.before:>7.3f} {a.after:>7.3f} "
                       f"{a.after - a.before:>+7.3f}")
    if loop.pump_errors:
        out.append(f"traffic errors (first {len(loop.pump_errors)}): {loop.pump_errors}")
    return out


def _render_rollout(name: str, r: RolloutRecord) -> list[str]:
    """A rollout's events, one line each, and the evidence of the last (the decision that ended
    it; the timeline has every event's)."""
    out = [f"rollout {r.id} ({name}, v{r.candidate}): {r.state}; devices on "
           f"v{r.candidate} at the end: {', '.join(r.devices_on_candidate) or 'none'}"]
    for e in r.events:
        out.append(f"  {str(e.get('at', ''))[11:19]}  step {e.get('step')}  "
                   f"{e.get('kind', ''):<9} {e.get('to_state', ''):<18} {e.get('message', '')}")
    decided = [e for e in r.events if e.get("evidence")]
    if decided:
        out += [f"      {line}" for line in evidence_lines(decided[-1].get("evidence"))]
    return out


def _s(v: object) -> str:
    return "-" if v is None else str(v)


def _f(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"
