"""The fleet summary's devices table says what its ``verdict`` compares, and why a device that
was not shifted can read ``drift`` (:data:`simulation.fleet_report.DRIFT_LEGEND`), and that
reason holds: a label-skewed share drifts from v1's reference where a sample of the training
split itself does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.datasets import load_dataset
from edgefleet.drift import build_reference
from edgefleet.drift.accumulator import DriftAccumulator
from server.drift.report import compute_drift
from simulation.fleet_devices import make_shares
from simulation.fleet_report import DRIFT_LEGEND, DeviceRow, FleetReport


def _device(i: int, shift: str, verdict: str) -> DeviceRow:
    return DeviceRow(device_id=f"fleet-device-{i}", data_dir=Path("."), shift=shift,
                     examples=300, class_counts=[30] * 10, answered={"local": 300},
                     drift={"verdict": verdict, "share_drifted": 0.5, "max_psi": 0.2,
                            "joint_effect": 1.0}, active_version=1)


def test_the_devices_table_is_followed_by_its_legend(tmp_path: Path) -> None:
    report = FleetReport(workdir=tmp_path, logs=tmp_path, model="digits",
                         devices=[_device(0, "brightness", "drift"), _device(1, "none", "drift")])
    lines = report.render().splitlines()
    rows = [n for n, line in enumerate(lines) if line.startswith("  fleet-device-")]
    assert rows == [rows[0], rows[0] + 1]
    assert lines[rows[-1] + 1:rows[-1] + 1 + len(DRIFT_LEGEND)] == [
        f"  {line}" for line in DRIFT_LEGEND]
    assert all(len(line) <= 100 for line in lines[rows[-1] + 1:rows[-1] + 1 + len(DRIFT_LEGEND)])
    empty = FleetReport(workdir=tmp_path, logs=tmp_path, model="digits").render()
    assert DRIFT_LEGEND[0] not in empty  # no table, no legend


def test_an_unshifted_label_skewed_share_reads_drift_and_a_training_sample_does_not() -> None:
    ds = load_dataset("digits", seed=0)
    reference = build_reference(ds.x_train, ds.y_train, [f"p{i}" for i in range(64)], 10)

    def verdict(x: np.ndarray) -> str:
        acc = DriftAccumulator(reference, model="digits", version=1)
        acc.update(x.astype(np.float32))
        return compute_drift(acc.to_summary(), reference).verdict

    _, shares = make_shares(ds, 4, central_fraction=0.1, alpha=0.5, shifts={}, traffic=300,
                            seed=0)
    assert {s.shift for s in shares} == {"none"}
    assert [verdict(s.traffic) for s in shares] == ["drift"] * 4
    rng = np.random.default_rng(1)
    sample = ds.x_train[rng.choice(len(ds.x_train), 300, replace=True)]
    assert verdict(sample) == "no_drift"
