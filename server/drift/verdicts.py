"""The three drift verdicts of a window, one Python API for every consumer.

Every :class:`~server.drift.DriftReport` (a window, a device, the whole fleet) carries a
:class:`DriftVerdicts`; fleet windows and hysteresis states carry the same three signals:

``input``        the features' distribution (per-feature tests, the combined test, the
                 predicted-class histogram);
``performance``  labelled accuracy against the version's validation accuracy;
``label_prior``  the known labels' class shares against the training labels'.

Each is ``"insufficient"`` (not enough data to judge: never a pass), ``"no_drift"`` or
``"drift"``. A consumer (the federated controller, a rollout guard) reads them as::

    report = compute_drift(summary, reference, thresholds, validation_accuracy=0.91)
    if report.verdicts.drifted:              # ["input", "performance", ...], possibly empty
        ...
    report.verdicts.of("performance")        # one signal's verdict
"""

from __future__ import annotations

from typing import Literal

from server.drift.base import ReportModel, Verdict

Signal = Literal["input", "performance", "label_prior"]
SIGNALS: tuple[Signal, ...] = ("input", "performance", "label_prior")


class DriftVerdicts(ReportModel):
    """The verdict of each drift signal of one window."""

    input: Verdict
    performance: Verdict
    label_prior: Verdict

    def of(self, signal: Signal) -> Verdict:
        """The verdict of ``signal``."""
        verdict: Verdict = getattr(self, signal)
        return verdict

    @property
    def drifted(self) -> list[Signal]:
        """The signals whose verdict is ``drift`` (in :data:`SIGNALS` order)."""
        return [s for s in SIGNALS if self.of(s) == "drift"]

    @property
    def insufficient(self) -> list[Signal]:
        """The signals that could not be judged."""
        return [s for s in SIGNALS if self.of(s) == "insufficient"]
