"""Selection policies: uniform, drift-prioritised, the fairness bound, over-selection."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from aggregation.errors import SettingsError
from aggregation.selection import (
    Candidate,
    DriftPrioritisedSelection,
    DriftScorer,
    FairnessBound,
    SelectionPolicy,
    UniformSelection,
    make_policy,
    over_selection_count,
)
from edgefleet.drift import DriftAccumulator, build_reference, feature_psi
from server.drift import compute_drift


@pytest.mark.parametrize(
    ("target", "factor", "expected"),
    [(10, 1.3, 13), (3, 1.3, 4), (1, 1.3, 2), (100, 1.3, 130), (7, 1.0, 7), (20, 1.25, 25)],
)
def test_over_selection_count(target: int, factor: float, expected: int) -> None:
    assert over_selection_count(target, factor) == expected


@pytest.mark.parametrize(("target", "factor"), [(0, 1.3), (5, 0.9), (5, float("nan"))])
def test_over_selection_rejects_bad_arguments(target: int, factor: float) -> None:
    with pytest.raises(SettingsError):
        over_selection_count(target, factor)


def cands(n: int, scores: Sequence[float | None] | None = None) -> list[Candidate]:
    scores = scores or [None] * n
    return [Candidate(node_id=100 + i, num_examples=50, drift_score=scores[i]) for i in range(n)]


def tally(policy: SelectionPolicy, candidates: list[Candidate], k: int, trials: int) -> Counter:
    counts: Counter[int] = Counter()
    rng = np.random.default_rng(1234)
    for r in range(1, trials + 1):
        picked = policy.select(candidates, k, r, rng)
        assert len(picked) == len(set(picked)) == min(k, len(candidates))
        assert set(picked) <= {c.node_id for c in candidates}
        counts.update(picked)
    return counts


def test_uniform_is_uniform_over_seeded_trials() -> None:
    counts = tally(UniformSelection(), cands(10), k=3, trials=3000)
    expected = 3000 * 3 / 10
    assert len(counts) == 10
    assert all(abs(c - expected) < 0.1 * expected for c in counts.values()), counts


def test_uniform_returns_everyone_when_k_exceeds_candidates() -> None:
    rng = np.random.default_rng(0)
    assert sorted(UniformSelection().select(cands(4), 10, 1, rng)) == [100, 101, 102, 103]
    assert UniformSelection().select([], 3, 1, rng) == []


def test_duplicate_candidates_are_refused() -> None:
    with pytest.raises(SettingsError):
        UniformSelection().select([Candidate(1), Candidate(1)], 1, 1, np.random.default_rng(0))


def test_drift_prioritised_prefers_drifted_nodes() -> None:
    scores: list[float | None] = [*([1.0] * 5), *([0.0] * 5)]
    counts = tally(DriftPrioritisedSelection(floor=0.1), cands(10, scores), k=3, trials=2000)
    drifted = sum(counts[100 + i] for i in range(5))
    calm = sum(counts[105 + i] for i in range(5))
    assert drifted > 3 * calm
    assert calm > 0  # the floor keeps undrifted nodes in play


def test_drift_weights_increase_with_score_and_treat_missing_as_configured() -> None:
    policy = DriftPrioritisedSelection(floor=0.1, missing_score=0.5)
    w = policy.weights(cands(5, [0.0, 0.25, 0.5, 1.0, None]))
    assert np.all(np.diff(w[:4]) > 0)
    assert w[4] == pytest.approx(w[2])
    assert policy.weights(cands(1, [7.0]))[0] == pytest.approx(1.1)  # clipped to 1


def test_fairness_bound_is_never_violated_over_many_rounds() -> None:
    scores: list[float | None] = [1.0, 1.0, 0.9, *([0.0] * 7)]
    fair = FairnessBound(DriftPrioritisedSelection(floor=0.01), max_picks=2, window=4, cooldown=1)
    rng = np.random.default_rng(7)
    history: dict[int, list[int]] = {}
    for r in range(1, 301):
        history[r] = fair.select(cands(10, scores), 4, r, rng)
    for node in range(100, 110):
        picked_rounds = [r for r, p in history.items() if node in p]
        assert all(b - a > 1 for a, b in itertools.pairwise(picked_rounds))
        for start in range(1, 301):
            window = [r for r in picked_rounds if start <= r < start + 4]
            assert len(window) <= 2
    # the drifted nodes were still preferred, within the bound
    totals = Counter(n for p in history.values() for n in p)
    assert totals[100] > totals[109]


def test_fairness_composes_with_uniform_and_selects_fewer_rather_than_break_the_bound() -> None:
    fair = FairnessBound(UniformSelection(), max_picks=1, window=3)
    rng = np.random.default_rng(0)
    first = fair.select(cands(4), 3, 1, rng)
    second = fair.select(cands(4), 3, 2, rng)
    assert len(first) == 3 and len(second) == 1
    assert not set(first) & set(second)
    assert fair.select(cands(4), 3, 3, rng) == []
    assert fair.picks_in_window(first[0], 3) == 1
    assert len(fair.select(cands(4), 3, 4, rng)) == 3  # round 1's picks left the window


def test_fairness_retried_round_replaces_its_picks() -> None:
    fair = FairnessBound(UniformSelection(), max_picks=1, window=2)
    rng = np.random.default_rng(0)
    fair.select(cands(2), 2, 1, rng)
    assert fair.select(cands(2), 2, 1, rng) != []  # same round again: not counted twice


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"max_picks": 0}, {"max_picks": 6},
                                    {"cooldown": -1}])
def test_fairness_parameters_are_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(SettingsError):
        FairnessBound(UniformSelection(), **kwargs)


def test_make_policy() -> None:
    assert isinstance(make_policy("uniform"), UniformSelection)
    assert isinstance(make_policy("drift"), DriftPrioritisedSelection)
    fair = make_policy("drift", fair_max_picks=2, fair_window=3)
    assert isinstance(fair, FairnessBound) and fair.name == "fair(drift)"
    with pytest.raises(SettingsError):
        make_policy("best")


# --- drift scores from real summaries ---------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    x = np.random.default_rng(0).normal(size=(2000, 8))
    return build_reference(x, np.zeros(2000, dtype=int), [f"f{i}" for i in range(8)], 2)


def summarise(reference, x: np.ndarray):
    acc = DriftAccumulator(reference, model="m", version=1)
    acc.update(x)
    return acc.to_summary()


def test_drift_score_separates_shifted_from_reference_like_data(reference) -> None:
    rng = np.random.default_rng(1)
    scorer = DriftScorer(reference)
    same = scorer.score(summarise(reference, rng.normal(size=(500, 8))))
    half = rng.normal(size=(500, 8))
    half[:, :4] += 2.0
    shifted = scorer.score(summarise(reference, half))
    assert same == 0.0
    assert shifted == 0.5
    all_shifted = scorer.score(summarise(reference, rng.normal(loc=2.0, size=(500, 8))))
    assert all_shifted == 1.0


def test_scores_use_the_one_shared_psi(reference) -> None:
    x = np.random.default_rng(4).normal(size=(400, 8))
    x[:, :3] += np.array([0.3, 1.0, 3.0])
    summary = summarise(reference, x)
    psi = DriftScorer(reference).psi(summary)
    np.testing.assert_allclose(psi, feature_psi(summary, reference))
    server_psi = [f.psi for f in compute_drift(summary, reference).features]
    np.testing.assert_allclose(psi, np.asarray(server_psi, dtype=float))
    assert psi[2] > psi[1] > psi[0] and np.all(psi[3:] < 0.2)


def test_non_finite_inputs_are_not_a_distribution_shift(reference) -> None:
    x = np.random.default_rng(2).normal(size=(400, 8))
    x[:200, 0] = np.nan  # half missing: the finite half is still reference-like
    x[:, 1] = np.nan  # nothing finite: no PSI at all
    scorer = DriftScorer(reference)
    psi = scorer.psi(summarise(reference, x))
    assert np.isnan(psi[1]) and psi[0] < 0.2 and np.all(psi[2:] < 0.2)
    assert scorer.score(summarise(reference, x)) == 0.0


def test_no_score_without_a_usable_summary(reference) -> None:
    scorer = DriftScorer(reference, min_rows=50)
    rng = np.random.default_rng(3)
    assert scorer.score(None) is None
    assert scorer.score(summarise(reference, rng.normal(size=(20, 8)))) is None
    other = build_reference(rng.normal(size=(300, 8)) * 5, np.zeros(300, int),
                            [f"f{i}" for i in range(8)], 2)
    assert scorer.score(summarise(other, rng.normal(size=(200, 8)))) is None
