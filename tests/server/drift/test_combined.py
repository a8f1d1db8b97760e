"""The combined test, the bias-free effect floor and the small-sample KS p-values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sst

from edgefleet.drift import DriftAccumulator, build_reference
from server.drift import DriftThresholds, compute_drift, stats
from server.drift.combined import combined_test
from tests.server.drift.support import gaussian_reference, summarise


def test_combined_test_sees_a_thin_shift_and_names_its_carriers() -> None:
    ref, _ = gaussian_reference(20, seed=3)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2000, 20))
    x[:, :8] += 0.08  # 8 of 20 features, each too little to pass its own floor (≈ 0.006)
    report = compute_drift(summarise(ref, x), ref)
    assert report.verdict == "drift" and report.drifted_features == []
    assert "shifted together" in report.reason
    combined = report.combined
    assert combined is not None and combined.drifted and combined.calibrated
    assert combined.n_features == 20 and combined.n_components == 40
    assert combined.effect == pytest.approx(8 * 0.08**2, rel=0.6)
    shifted = {f"f{j}" for j in range(8)}
    # carriers are significant alone at the unadjusted 5 %: the largest are the shifted ones
    names = [c.name for c in combined.carriers]
    assert len(names) >= 4 and set(names[:4]) <= shifted
    assert sum(c.share for c in combined.carriers if c.name in shifted) >= 0.6
    assert all(c.z_location is not None and c.z_location > 0 for c in combined.carriers[:4])
    off = compute_drift(summarise(ref, x), ref, DriftThresholds(combined_share=0.0))
    assert off.combined is None and off.verdict == "no_drift"


def test_correlation_is_accounted_for() -> None:
    """40 copies of one latent feature: the traces make them count as about one."""
    rng = np.random.default_rng(9)
    latent = rng.normal(size=(5000, 1))
    x_ref = 0.98 * latent + 0.2 * rng.normal(size=(5000, 40))
    ref = build_reference(x_ref, np.zeros(5000, int), [f"p{j}" for j in range(40)], 2)
    assert ref.score_traces is not None
    c1, c2, _ = ref.score_traces
    assert c1 == pytest.approx(80.0)
    assert c1 * c1 / c2 < 6  # effective number of independent score components
    alarms = 0
    for _ in range(200):
        z = rng.normal(size=(300, 1))
        window = 0.98 * z + 0.2 * rng.normal(size=(300, 40))
        acc = DriftAccumulator(ref, model="m", version=1)
        acc.update(window)
        report = compute_drift(acc.to_summary(), ref)
        assert report.combined is not None and report.combined.calibrated
        alarms += report.combined.pvalue is not None and report.combined.pvalue < 0.025
    assert alarms / 200 <= 0.05
    # without the traces (an older plan) the test assumes the worst case and stays valid
    bare = ref.model_copy(update={"score_traces": None})
    acc = DriftAccumulator(bare, model="m", version=1)
    acc.update(0.98 * rng.normal(size=(300, 1)) + 0.2 * rng.normal(size=(300, 40)))
    report = compute_drift(acc.to_summary(), bare)
    assert report.combined is not None and not report.combined.calibrated


def test_quadratic_form_tail_matches_a_simulation() -> None:
    lam = np.asarray([5.0, 2.0, 1.0, 1.0, 0.5, 0.25])
    rng = np.random.default_rng(10)
    draws = (rng.chisquare(1, size=(400_000, lam.size)) * lam).sum(axis=1)
    c = [float((lam**k).sum()) for k in (1, 2, 3)]
    # the three-moment fit is within 15 % at the levels the verdict uses, 30 % far out
    for q, rel in ((0.05, 0.15), (0.025, 0.15), (0.01, 0.15), (0.001, 0.3)):
        s = np.quantile(draws, 1 - q)
        assert float(stats.quadratic_form_sf(s, *c)) == pytest.approx(q, rel=rel)
    # independent unit terms: exactly chi-square
    assert float(stats.quadratic_form_sf(14.07, 7, 7, 7)) == pytest.approx(
        sst.chi2.sf(14.07, 7), rel=1e-9
    )


def test_bias_corrected_psi_means_the_same_at_200_and_50000_rows() -> None:
    """Mean over windows of the floor's effect size: equal at both n; raw PSI is not."""
    ref, _ = gaussian_reference(1, m=5000, seed=4)
    rng = np.random.default_rng(11)
    means = {}
    for n, trials in ((200, 600), (50_000, 20)):
        corrected, raw = [], []
        for _ in range(trials):
            f = compute_drift(summarise(ref, rng.normal(0.25, 1.0, size=(n, 1))), ref).features[0]
            assert f.psi_corrected is not None and f.psi is not None
            corrected.append(f.psi_corrected)
            raw.append(f.psi)
        se = np.std(corrected) / np.sqrt(trials)
        means[n] = (float(np.mean(corrected)), float(se), float(np.mean(raw)))
    (small, se_small, raw_small), (large, se_large, raw_large) = means[200], means[50_000]
    print(
        f"\nbias-corrected PSI, 0.25σ shift: {small:.4f} ± {se_small:.4f} at n=200, "
        f"{large:.4f} ± {se_large:.4f} at n=50,000; raw PSI {raw_small:.4f} vs {raw_large:.4f}"
    )
    assert abs(small - large) <= 3 * np.hypot(se_small, se_large)
    assert raw_small - raw_large > 0.03  # raw PSI: about (bins - 1) / n = 0.045 higher
    # no shift: the corrected effect is about zero at any n, raw PSI is not
    nulls = [
        compute_drift(summarise(ref, rng.normal(size=(200, 1))), ref).features[0]
        for _ in range(300)
    ]
    assert abs(np.mean([f.psi_corrected or 0.0 for f in nulls])) < 0.005
    assert np.mean([f.psi or 0.0 for f in nulls]) > 0.04


@pytest.mark.parametrize("n", [20, 50])
def test_small_window_ks_p_values_are_exact_and_valid(n: int) -> None:
    ref, _ = gaussian_reference(1, m=5000, seed=5)
    rng = np.random.default_rng(n)
    d = np.asarray([0.1, 0.2, 0.3, 0.4])
    en = round(n * 5000 / (n + 5000))
    np.testing.assert_allclose(stats.ks_pvalue(d, n, 5000), sst.kstwo.sf(d, en), rtol=1e-12)
    p = np.asarray(
        [
            compute_drift(
                summarise(ref, rng.normal(size=(n, 1))), ref, DriftThresholds(min_samples=n)
            )
            .features[0]
            .ks_pvalue
            for _ in range(1000)
        ]
    )
    for level in (0.01, 0.05, 0.1):
        assert np.mean(p < level) <= level  # binned: never more alarms than the level


def test_combined_test_needs_tested_features() -> None:
    ref, _ = gaussian_reference(3)
    summary = summarise(ref, np.zeros((50, 3)))
    none_tested = np.zeros(3, dtype=bool)
    assert (
        combined_test(
            summary,
            ref,
            none_tested,
            test_alpha=0.025,
            exit_alpha=0.1,
            effect_min=0.02,
            effect_exit=0.01,
            alpha=0.05,
        )
        is None
    )
