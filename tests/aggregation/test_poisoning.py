"""One attacker among 10 digits clients, under the DEFAULT settings: round-10 accuracy stays
within 0.02 of the run without that client (see attacks.py for the attacks)."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from edgefleet.datasets import Dataset
from edgefleet.plan import PlanManifest
from edgefleet.runtime import PlanRuntime
from tests.aggregation.attacks import CLIENTS, Outcome, run_experiment

pytestmark = pytest.mark.slow
TOLERANCE = 0.02
SMALLEST, LARGEST = 0, CLIENTS - 1


@pytest.fixture(scope="module")
def experiment(digits_plan_dir: Path, digits_data: Dataset, tmp_path_factory):
    """``run(behaviours) -> Outcome`` from the untrained plan (cached per behaviour list)."""
    out = tmp_path_factory.mktemp("attack-plan")
    for name in ("plan.tflite", "manifest.json"):
        shutil.copy(digits_plan_dir / name, out / name)
    manifest = PlanManifest.load(out / "manifest.json")
    plan = (out / "plan.tflite").read_bytes()
    initial = PlanRuntime.from_bytes(plan, manifest).get_weights()

    @cache
    def run(behaviours: tuple[str, ...]) -> Outcome:
        return run_experiment(plan, manifest, initial, digits_data, behaviours)

    return run


def one(attacker: int, behaviour: str) -> tuple[str, ...]:
    b = ["honest"] * CLIENTS
    b[attacker] = behaviour
    return tuple(b)


@pytest.mark.parametrize(("attacker", "attack"), [
    (SMALLEST, "inflate"), (LARGEST, "inflate"),
    (SMALLEST, "flip1"), (SMALLEST, "flip10"), (LARGEST, "flip1"), (LARGEST, "flip10"),
    (SMALLEST, "noise"), (LARGEST, "noise"),
])
def test_one_attacker_changes_round_10_accuracy_by_at_most_002(
    experiment, attacker: int, attack: str
) -> None:
    without = experiment(one(attacker, "absent"))
    attacked = experiment(one(attacker, attack))
    assert len(attacked.accuracy) == 10 and not np.isnan(attacked.final)
    assert abs(attacked.final - without.final) <= TOLERANCE, (attacked.accuracy, without.accuracy)
    assert attacked.refused >= 3 and len(attacked.quarantined) == 1  # refused, then left out


def test_honest_clients_are_never_refused(experiment) -> None:
    honest = experiment(("honest",) * CLIENTS)
    assert honest.refused == 0 and honest.quarantined == []
    assert honest.final > 0.6
