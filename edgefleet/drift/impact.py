"""Does the fleet's drift matter enough to retrain? Share affected × severity, from readings.

A threshold on "some drift somewhere" starts a run for a shift nobody pays for (a +1 grey-level
brightness offset measures PSI ≈ 16 on near-constant border pixels and costs the harness's
digits model about a point) and never for a few devices, however badly they are hit.
:func:`fleet_impact` weighs instead the devices' :class:`~edgefleet.drift.baseline.Reading` s
on the version they run (change against each device's own baseline, so standing non-IID-ness
is not drift):

* the **changed** devices are those whose input change reaches ``min_change`` (clean devices
  measured against their own baseline stay below it but for noise);
* their **severity**, together: where they have labels (``min_labels`` in a device's baseline
  and recent windows), their *pooled* labelled-accuracy drop less ``label_z`` standard errors,
  over ``min_accuracy_drop`` — pooled because a device's hundred labels leave ±4 points of
  noise on its own accuracy, too much to judge a 5-point drop on one device; without labels,
  their mean change over ``min_effect`` (an input effect is only a proxy: how much a shift of a
  given size costs depends on its kind, and labelled accuracy is the real cost);
* devices whose inputs did not change but whose labelled accuracy fell (concept drift: the
  same inputs now mean other labels) are judged one by one, the same way but with
  ``device_z`` standard errors off;
* a group counts when its severity reaches 1; the fleet's **impact** is the share of devices
  in the counting groups times their severity (capped at ``max_severity``), and it
  **triggers** at ``min_impact`` — by default 0.1: 10 % of the fleet at the severity threshold,
  or 2.5 % at four times it.

Every threshold is an :class:`ImpactConfig` field. Numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgefleet.drift.baseline import Reading


@dataclass(frozen=True)
class ImpactConfig:
    """When fleet drift is worth a run (see the module notes).

    Parameters
    ----------
    min_change : float (default: 0.15)
        Input change (effect size against the device's own baseline) that makes a device
        *changed*: above the noise of clean 100-row windows against a 300-row baseline (99th
        percentile 0.15 on digits).
    min_accuracy_drop : float (default: 0.025)
        Labelled-accuracy drop (its lower bound) that makes a group's severity 1: between the
        1 point that must not start a run and the 5 points that must.
    min_effect : float (default: 0.5)
        Without labels, the mean change that makes a group's severity 1 (half a standard
        deviation on every feature).
    label_z : float (default: 1.0)
        Standard errors taken off a group's pooled labelled drop before it is compared.
    device_z : float (default: 3.0)
        The same for a single device whose inputs did not change: among forty clean devices,
        one standard error would let a couple through by chance every window.
    max_severity : float (default: 4.0)
        Cap of a group's severity, so a few devices cannot speak for the fleet.
    min_impact : float (default: 0.1)
        Impact that starts a run.
    use_labels : bool (default: True)
        ``False`` judges by inputs only.
    """

    min_change: float = 0.15
    min_accuracy_drop: float = 0.025
    min_effect: float = 0.5
    label_z: float = 1.0
    device_z: float = 3.0
    max_severity: float = 4.0
    min_impact: float = 0.1
    use_labels: bool = True

    def __post_init__(self) -> None:
        if not all(v > 0 for v in (self.min_change, self.min_accuracy_drop, self.min_effect,
                                   self.min_impact)):
            raise ValueError("min_change, min_accuracy_drop, min_effect and min_impact must "
                             "be > 0")
        if not self.max_severity >= 1 or min(self.label_z, self.device_z) < 0:
            raise ValueError("max_severity must be >= 1, label_z and device_z >= 0")


@dataclass(frozen=True)
class FleetImpact:
    """The fleet's drift weighed by what it costs (see the module notes)."""

    devices: int
    changed: int
    affected: int
    impact: float
    severity: float
    accuracy_drop: float | None
    mean_change: float | None
    triggered: bool

    @property
    def share_affected(self) -> float:
        return self.affected / self.devices if self.devices else 0.0


def pooled_drop(readings: Iterable[Reading]) -> tuple[float, float] | None:
    """``(drop, standard error)`` of the pooled labelled accuracy, baseline minus recent."""
    bt = bc = rt = rc = 0.0
    for r in readings:
        if r.baseline_accuracy is None or r.recent_accuracy is None:
            continue
        bt += r.baseline_labels
        bc += r.baseline_accuracy * r.baseline_labels
        rt += r.recent_labels
        rc += r.recent_accuracy * r.recent_labels
    if bt == 0 or rt == 0:
        return None
    a, b = bc / bt, rc / rt
    return a - b, math.sqrt(a * (1 - a) / bt + b * (1 - b) / rt)


def group_severity(readings: list[Reading], config: ImpactConfig, z: float | None = None
                   ) -> tuple[float, float | None]:
    """``(severity, pooled drop or None)`` of a group of devices (see the module notes);
    ``z`` standard errors off the drop (default ``label_z``)."""
    pooled = pooled_drop(readings) if config.use_labels else None
    if pooled is not None:
        drop, se = pooled
        lower = max(0.0, drop - (config.label_z if z is None else z) * se)
        return min(config.max_severity, lower / config.min_accuracy_drop), drop
    changes = [r.change for r in readings if r.change is not None]
    if not changes:
        return 0.0, None
    return min(config.max_severity, sum(changes) / len(changes) / config.min_effect), None


def fleet_impact(readings: Mapping[str, Reading], config: ImpactConfig | None = None
                 ) -> FleetImpact:
    """Weigh the devices' readings (see the module notes)."""
    cfg = config or ImpactConfig()
    n = len(readings)
    changed = [r for r in readings.values() if r.change is not None
               and r.change >= cfg.min_change]
    severity, drop = group_severity(changed, cfg) if changed else (0.0, None)
    affected = len(changed) if severity >= 1.0 else 0
    impact = affected / n * severity if n else 0.0
    if cfg.use_labels:  # unchanged inputs, lower labelled accuracy: judged device by device
        for r in readings.values():
            if r.change is not None and r.change < cfg.min_change:
                sev, _ = group_severity([r], cfg, cfg.device_z)
                if sev >= 1.0:
                    affected += 1
                    impact += sev / n
    changes = [r.change for r in readings.values() if r.change is not None]
    return FleetImpact(
        devices=n, changed=len(changed), affected=affected, impact=impact, severity=severity,
        accuracy_drop=drop, mean_change=sum(changes) / len(changes) if changes else None,
        triggered=impact >= cfg.min_impact,
    )
