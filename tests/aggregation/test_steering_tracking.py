"""Drift as change: effect size, per-node baselines and windows, the reserved-share policy, the
same clients for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation.errors import SettingsError
from aggregation.selection import Candidate, DriftPrioritisedSelection, UniformSelection
from aggregation.selection.drift import DEFAULT_THRESHOLD
from aggregation.selection.tracking import DriftTracker, TrackerConfig
from edgefleet.drift import DriftAccumulator, DriftSummary, ReferenceProfile, build_reference
from edgefleet.drift.effect import (
    Moments,
    feature_scales,
    moment_shift,
    spread_factors,
    squared_shift,
    summary_shift,
)


def window(ref: ReferenceProfile, x: np.ndarray, rows: int, seed: int, *, version: int = 1,
           shift: float = 0.0) -> DriftSummary:
    pick = np.random.default_rng(seed).integers(0, len(x), size=rows)
    acc = DriftAccumulator(ref, model="m", version=version)
    acc.update(np.clip(x[pick] + shift, 0, 16))
    return acc.to_summary()


# --- the effect size ----------------------------------------------------------------------------
def test_effect_grows_with_the_shift_and_a_near_constant_feature_cannot_blow_it_up() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, size=(5000, 4))
    base[:, 0] = 0.0  # constant on the training data, like a digit's border pixel
    ref = build_reference(base, np.zeros(5000, int), list("abcd"), 1)
    scales = feature_scales(ref)
    assert scales[0] == pytest.approx(0.5 * np.median(scales[1:]), rel=0.1)  # floored

    def effect(offset: float) -> float:
        x = rng.normal(0, 1, size=(2000, 4)) + offset
        x[:, 0] = offset
        acc = DriftAccumulator(ref, model="m", version=1)
        acc.update(x)
        return summary_shift(acc.to_summary(), ref, ref)

    small, big = effect(0.1), effect(0.8)
    assert 6 < big / small < 10  # about linear: 8 times the offset, 8 times the effect
    assert small < 0.3  # the constant feature's jump weighs like a 0.2σ shift, not like PSI 16


@pytest.mark.parametrize("rows", [40, 400])
def test_an_unchanged_window_has_no_sample_size_bias(digits, rows: int) -> None:
    x, _, ref = digits
    scales, spread = feature_scales(ref), spread_factors(ref)
    sq = np.array([squared_shift(Moments.of_summary(window(ref, x, rows, 2 * i)),
                                 Moments.of_summary(window(ref, x, rows, 2 * i + 1)), scales,
                                 spread)
                   for i in range(30)])
    # signed and unbiased: centred on 0 (within 3 standard errors) at 40 rows as at 400
    assert abs(sq.mean()) < 3 * sq.std() / np.sqrt(len(sq))
    shifted = moment_shift(Moments.of_summary(window(ref, x, rows, 99, shift=4.0)),
                           Moments.of_summary(window(ref, x, rows, 98)), scales)
    assert shifted > 0.8 > 10 * abs(sq.mean())


# --- baselines: label skew is not drift, a change is ---------------------------------------
def test_the_tracker_tells_standing_label_skew_from_a_change(digits) -> None:
    x, y, ref = digits
    skewed = x[y < 3]  # a client with three classes only
    tracker = DriftTracker(ref)
    for r in range(1, 4):
        tracker.observe(1, window(ref, skewed, 100, r))
        tracker.observe(2, window(ref, skewed, 100, 10 + r))
        tracker.observe(3, window(ref, x, 100, 20 + r))
    # against the reference the skewed clients look drifted, against themselves they do not
    assert tracker.reading(1).difference > 3 * tracker.reading(3).difference
    # scored against the reference, the skewed client would be steered as drifted
    assert tracker.reading(1).difference > DEFAULT_THRESHOLD * tracker.config.full_effect
    assert max(tracker.score(1), tracker.score(2), tracker.score(3)) < DEFAULT_THRESHOLD
    tracker.observe(2, window(ref, skewed, 100, 50, shift=4.0))  # client 2 changes
    assert tracker.score(2) == 1.0 and tracker.score(1) < DEFAULT_THRESHOLD


def test_cumulative_summaries_are_scored_on_their_newest_rows(digits) -> None:
    x, _, ref = digits
    cumulative = DriftAccumulator(ref, model="m", version=1)
    tracker = DriftTracker(ref)
    rng = np.random.default_rng(0)
    for _ in range(4):  # an edge device: one summary since the install, growing
        cumulative.update(x[rng.integers(0, len(x), 100)])
        tracker.observe(7, cumulative.to_summary())
    cumulative.update(np.clip(x[rng.integers(0, len(x), 60)] + 4.0, 0, 16))
    tracker.observe(7, cumulative.to_summary())
    reading = tracker.reading(7)
    assert reading is not None and reading.rows == 60  # the window since the last summary
    # the whole cumulative summary is diluted by 400 old rows; the window is not
    whole = summary_shift(cumulative.to_summary(), window(ref, x, 400, 1), ref)
    assert reading.change > 2 * whole and tracker.score(7) == 1.0


def test_a_new_version_starts_a_new_baseline(digits) -> None:
    x, _, ref = digits
    tracker = DriftTracker(ref)
    tracker.observe(1, window(ref, x, 100, 1))
    tracker.observe(1, window(ref, x, 100, 2, shift=4.0))
    assert tracker.score(1) == 1.0
    tracker.observe(1, window(ref, x, 100, 3, version=2, shift=4.0))
    tracker.observe(1, window(ref, x, 100, 4, version=2, shift=4.0))
    assert tracker.score(1) < DEFAULT_THRESHOLD  # healthy on the version trained on it


def test_a_node_first_seen_drifted_is_scored_by_its_excess_over_the_fleet(digits) -> None:
    x, _, ref = digits
    tracker = DriftTracker(ref)
    for node in range(5):
        tracker.observe(node, window(ref, x, 60, node))  # 60 rows: no complete baseline
    tracker.observe(9, window(ref, x, 60, 9, shift=4.0))
    assert tracker.reading(9).change is None
    assert tracker.score(9) == 1.0
    assert max(tracker.score(n) for n in range(5)) < DEFAULT_THRESHOLD


# --- selection -----------------------------------------------------------------------------
def fleet(drifted: int, clean: int) -> list[Candidate]:
    return ([Candidate(100 + i, 30, 1.0) for i in range(drifted)]
            + [Candidate(200 + i, 30, 0.0) for i in range(clean)])


@pytest.mark.parametrize("policy", [UniformSelection(), DriftPrioritisedSelection()])
def test_the_same_seed_selects_the_same_clients_whatever_the_reply_order(policy) -> None:
    cands = fleet(12, 28)
    shuffled = list(cands)
    np.random.default_rng(5).shuffle(shuffled)
    a = policy.select(cands, 13, 3, np.random.default_rng(42))
    b = policy.select(shuffled, 13, 3, np.random.default_rng(42))
    assert a == b and len(set(a)) == 13


def test_the_reserved_share_bounds_what_the_clean_clients_lose() -> None:
    policy = DriftPrioritisedSelection(share=0.7)
    for seed in range(50):
        picked = policy.select(fleet(12, 28), 10, 1, np.random.default_rng(seed))
        drifted = sum(1 for n in picked if n < 200)
        assert 7 <= drifted <= 10 and len(set(picked)) == 10
    few = policy.select(fleet(2, 28), 10, 1, np.random.default_rng(0))
    assert {100, 101} <= set(few) and len(few) == 10  # fewer drifted than slots: all of them
    none = policy.select(fleet(0, 28), 10, 1, np.random.default_rng(0))
    assert len(none) == 10


def test_policy_and_tracker_settings_are_checked() -> None:
    with pytest.raises(SettingsError):
        DriftPrioritisedSelection(share=1.5)
    with pytest.raises(SettingsError):
        DriftPrioritisedSelection(threshold=0.0)
    with pytest.raises(SettingsError):
        TrackerConfig(full_effect=0.0)


def _one_by_one(tracker: DriftTracker, server_round: int, nodes: list[int],
                summaries: list[DriftSummary | None]) -> list[float | None]:
    """The per-node scoring that ``round_scores`` does for the whole fleet at once."""
    tracker.observe_many(zip(nodes, summaries, strict=True))
    fleet = tracker.fleet_difference()
    raw = tracker.raw_scores(fleet)
    loss = tracker.start_round(server_round, fleet, raw)
    return [tracker.score(n, fleet, loss, raw.get(n)) for n in nodes]


def test_fleet_scores_at_once_equal_the_node_by_node_scores(digits) -> None:
    x, _, ref = digits
    one, fleet = DriftTracker(ref), DriftTracker(ref)
    nodes = list(range(1, 31))
    for r in range(1, 7):
        # nodes 1-8 drift from round 3, a third of the nodes send nothing new each round,
        # node 30 never sends a summary; the first-epoch losses gate some drifted nodes
        summaries = [None if (n == 30 or (n + r) % 3 == 0) else
                     window(ref, x, 60, 100 * r + n, shift=4.0 if n <= 8 and r >= 3 else 0.0)
                     for n in nodes]
        want = _one_by_one(one, r, nodes, summaries)
        got = fleet.round_scores(r, nodes, summaries)
        assert [None if np.isnan(g) else float(g) for g in got] == want
        assert fleet.drifted_since == one.drifted_since
        losses = {n: (2.0 if n <= 4 else 0.5) + 0.01 * n for n in nodes[::2]}
        one.trained(r, losses)
        fleet.trained(r, losses)
    assert any(s is not None and s >= DEFAULT_THRESHOLD for s in want)  # some did drift
    assert 0.0 in want[:8]  # and some drifted node's loss gated its score
