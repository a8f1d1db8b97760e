"""Smooth scores and correlation traces in the reference; the drift package's one-way imports."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edgefleet.drift import DriftAccumulator, ReferenceProfile, build_reference
from edgefleet.drift.scores import (
    correlation_traces,
    reference_moments,
    standardized_scores,
    summary_scores,
)

DRIFT = Path(__file__).resolve().parents[2] / "edgefleet" / "drift"


def _imports(module: str) -> set[str]:
    tree = ast.parse((DRIFT / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("edgefleet.drift.")
        ):
            found.add(node.module.removeprefix("edgefleet.drift."))
    return found


def test_drift_modules_import_one_way() -> None:
    """reference/scores <- state <- summary <- accumulator, compare: no circle, not even typed."""
    order = ["scores", "reference", "state", "summary", "compare", "accumulator"]
    for i, module in enumerate(order):
        assert _imports(module) <= set(order[:i]), (module, _imports(module))


def test_scores_are_standardized_on_the_reference() -> None:
    rng = np.random.default_rng(0)
    col = rng.normal(size=4000)
    ref = build_reference(col[:, None], np.zeros(4000, int), ["x"], 2)
    counts = ref.features[0].bin_counts
    idx = np.searchsorted(ref.features[0].bin_edges, col, side="right")
    z = standardized_scores(idx, counts)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose((z * z).mean(axis=0), 1.0, rtol=1e-12)
    scores = summary_scores(counts)
    assert scores.shape == (len(counts) + 2, 2)
    assert scores[0, 0] == pytest.approx(-np.sqrt(3)) and scores[-1, 0] == pytest.approx(np.sqrt(3))
    mean, var = reference_moments(counts)
    assert np.all(var > 0) and np.all(np.abs(mean) < 0.05)


def test_reference_carries_the_traces_of_correlated_features() -> None:
    rng = np.random.default_rng(1)
    independent = rng.normal(size=(3000, 6))
    ref = build_reference(independent, np.zeros(3000, int), [f"f{j}" for j in range(6)], 2)
    assert ref.score_traces is not None
    c1, c2, c3 = ref.score_traces
    assert c1 == pytest.approx(12.0) and c2 == pytest.approx(12.0, rel=0.05)
    assert c3 == pytest.approx(12.0, rel=0.1)
    copies = np.repeat(rng.normal(size=(3000, 1)), 6, axis=1)
    same = build_reference(copies, np.zeros(3000, int), [f"f{j}" for j in range(6)], 2)
    assert same.score_traces is not None
    assert same.score_traces[1] == pytest.approx(6 * 2 * 6, rel=0.05)  # two blocks of ones
    # traces survive the manifest's JSON and do not change the summary layout's fingerprint
    again = ReferenceProfile.model_validate_json(ref.model_dump_json())
    assert again.score_traces == ref.score_traces
    bare = ref.model_copy(update={"score_traces": None})
    assert bare.fingerprint == ref.fingerprint
    DriftAccumulator(bare, model="m", version=1)  # a reference without traces still works
    for bad in ([1.0, float("nan"), 1.0], [1.0, -1.0, 1.0], [1.0, 1.0]):
        with pytest.raises(ValidationError):
            ReferenceProfile.model_validate({**ref.model_dump(), "score_traces": bad})


def test_traces_from_the_gram_matrix_when_components_outnumber_rows() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(50, 300))
    a = z / np.sqrt((z * z).mean(axis=0))
    r = a.T @ a / 50
    want = [np.trace(r), np.trace(r @ r), np.trace(r @ r @ r)]
    np.testing.assert_allclose(correlation_traces(z), want, rtol=1e-9)
    assert correlation_traces(np.zeros((10, 0))) == [0.0, 0.0, 0.0]
