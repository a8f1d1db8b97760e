"""The TensorFlow Federated reference backend agrees with the production aggregation on frozen
inputs: same accuracy every round, weights within float round-off.

It needs TFF's own virtual environment (``bash scripts/tff_venv.sh``, about 2.5 GB): without
it, the test fails with the message saying how to build it (it does not skip).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulation.tff_backend import compare_backends
from tests.simulation.conftest import experiment

pytestmark = pytest.mark.slow


def test_flower_and_tff_agree_round_by_round(tmp_path: Path) -> None:
    exp = experiment(tmp_path, rounds=3, clients={"count": 4, "per_round": 4,
                                                  "over_selection": 1.0},
                     model={"zoo": "mlp", "hidden": [32], "batch_size": 16})
    result = compare_backends(exp)
    assert len(result.rows) == 3
    assert result.max_acc_diff == 0.0
    assert result.max_weight_diff < 1e-5
    assert result.rows[-1]["flower_accuracy"] > result.rows[0]["flower_accuracy"]
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "comparison.csv").is_file()
