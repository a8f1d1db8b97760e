"""The binned statistics agree with scipy and with direct computations on the raw data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sst
from scipy.spatial.distance import jensenshannon

from edgefleet.drift import build_reference, feature_psi
from server.drift import compute_drift, stats
from tests.server.drift.support import gaussian_reference, summarise

RNG_SEED = 7


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("no shift", lambda r, n: r.normal(size=n)),
        ("0.5 sd shift", lambda r, n: r.normal(0.5, 1.0, size=n)),
        ("0.2 sd shift", lambda r, n: r.normal(0.2, 1.0, size=n)),
        ("scale x1.5", lambda r, n: r.normal(0.0, 1.5, size=n)),
        ("3 sd shift (out of range)", lambda r, n: r.normal(3.0, 1.0, size=n)),
        ("skewed", lambda r, n: r.exponential(1.0, size=n) - 1.0),
    ],
)
def test_binned_ks_is_within_003_of_scipy_on_raw_data(case: str, make: object) -> None:
    ref, x_ref = gaussian_reference(1, m=20_000, seed=1)
    rng = np.random.default_rng(RNG_SEED)
    x = make(rng, 5000)  # type: ignore[operator]
    report = compute_drift(summarise(ref, x[:, None]), ref)
    raw = sst.ks_2samp(x, x_ref[:, 0])
    binned = report.features[0].ks_statistic
    print(f"\n{case}: KS raw {raw.statistic:.4f}, binned {binned:.4f}")
    assert binned is not None
    assert binned <= raw.statistic + 1e-12  # binned CDF points are a subset of all points
    assert abs(binned - raw.statistic) <= 0.03


def test_binned_ks_is_exact_on_discrete_data() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x_ref = rng.integers(0, 6, size=(3000, 1)).astype(float)
    ref = build_reference(x_ref, np.zeros(3000, int), ["level"], 2)
    x = rng.choice(6, p=[0.1, 0.1, 0.2, 0.2, 0.2, 0.2], size=(800, 1)).astype(float)
    feature = compute_drift(summarise(ref, x), ref).features[0]
    raw = sst.ks_2samp(x[:, 0], x_ref[:, 0])
    assert feature.ks_statistic == pytest.approx(raw.statistic, abs=1e-12)


@pytest.mark.parametrize("n", [200, 500, 5000])
@pytest.mark.parametrize("m", [1000, 20_000])
def test_ks_pvalue_accounts_for_both_sizes(n: int, m: int) -> None:
    en = round(n * m / (n + m))
    d = np.asarray([0.5, 1.0, 1.5, 2.0]) / np.sqrt(en)  # p from ~0.96 down to ~7e-4
    exact = sst.kstwo.sf(d, en)  # what ks_2samp's asymptotic method uses
    np.testing.assert_allclose(stats.ks_pvalue(d, n, m), exact, rtol=0.05)
    assert np.all(np.isnan(stats.ks_pvalue(d, 0, m)))


def test_psi_equals_a_direct_computation_on_raw_data() -> None:
    ref, x_ref = gaussian_reference(3, m=4000, seed=2)
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal([0.0, 0.3, 0.0], [1.0, 1.0, 2.0], size=(700, 3))
    x[:5, 2] = 50.0  # overflow folds into the last reference bin
    summary = summarise(ref, x)
    report = compute_drift(summary, ref)
    eps = report.thresholds.psi_epsilon
    shared = feature_psi(summary, ref)  # the numpy-only PSI devices and the aggregation use
    for j, fr in enumerate(ref.features):
        bins = [-np.inf, *fr.bin_edges, np.inf]
        p = np.histogram(x[:, j], bins)[0] / len(x)
        q = np.histogram(x_ref[:, j], bins)[0] / len(x_ref)
        k = len(p)
        ps, qs = (p + eps) / (1 + k * eps), (q + eps) / (1 + k * eps)
        direct = float(np.sum((ps - qs) * np.log(ps / qs)))
        assert report.features[j].psi == pytest.approx(direct, rel=1e-12, abs=1e-15)
        assert shared[j] == pytest.approx(direct, rel=1e-12, abs=1e-15)
        assert report.features[j].js_distance == pytest.approx(
            jensenshannon(p, q, base=2), abs=1e-12
        )


def test_psi_smoothing_keeps_empty_bins_finite() -> None:
    p, q = np.asarray([10.0, 0.0, 90.0]), np.asarray([0.0, 50.0, 50.0])
    eps = 1e-4
    ps, qs = (p / 100 + eps) / (1 + 3 * eps), (q / 100 + eps) / (1 + 3 * eps)
    assert stats.psi(p, q, epsilon=eps) == pytest.approx(np.sum((ps - qs) * np.log(ps / qs)))
    assert np.isfinite(stats.psi(p, q))
    assert stats.psi(p, p) == 0.0
    padded = stats.psi(
        np.asarray([[10.0, 0.0, 90.0, 0.0]]),
        np.asarray([[0.0, 50.0, 50.0, 0.0]]),
        np.asarray([[True, True, True, False]]),
        epsilon=eps,
    )
    assert padded[0] == pytest.approx(stats.psi(p, q, epsilon=eps), rel=1e-12)


def test_wasserstein_integrates_the_linearly_interpolated_cdfs() -> None:
    rng = np.random.default_rng(RNG_SEED)
    p, q = rng.integers(0, 50, size=8).astype(float), rng.integers(1, 50, size=8).astype(float)
    edges = np.concatenate([[-3.0], np.sort(rng.normal(size=7)), [3.0]])
    grid = np.linspace(-3.0, 3.0, 600_001)
    cdf = lambda c: np.interp(grid, edges, np.concatenate([[0.0], np.cumsum(c) / c.sum()]))  # noqa: E731
    numeric = np.trapezoid(np.abs(cdf(p) - cdf(q)), grid)
    assert stats.wasserstein(p, q, edges) == pytest.approx(numeric, rel=1e-6)


def test_chi_square_matches_scipy() -> None:
    rng = np.random.default_rng(RNG_SEED)
    p, q = rng.integers(0, 50, size=8).astype(float), rng.integers(1, 50, size=8).astype(float)
    p[2] = q[2] = 0.0
    chi2, dof, pval = stats.chi2_two_sample(p, q)
    want = sst.chi2_contingency(np.stack([p, q])[:, (p + q) > 0], correction=False)
    assert (chi2, dof, pval) == pytest.approx((want.statistic, want.dof, want.pvalue))
    assert dof == 6
    assert np.isnan(stats.chi2_two_sample(np.zeros(3), q[:3])[0])


@pytest.mark.parametrize(
    ("case", "make", "rel"),
    [
        ("0.5 sd shift", lambda r, n: r.normal(0.5, 1.0, size=n), 0.1),
        ("0.2 sd shift", lambda r, n: r.normal(0.2, 1.0, size=n), 0.1),
        ("scale x1.5", lambda r, n: r.normal(0.0, 1.5, size=n), 0.25),
        ("skewed", lambda r, n: r.exponential(1.0, size=n) - 1.0, 0.25),
        ("3 sd shift (out of range)", lambda r, n: r.normal(3.0, 1.0, size=n), 0.4),
    ],
)
def test_binned_wasserstein_tracks_the_raw_distance(case: str, make: object, rel: float) -> None:
    ref, x_ref = gaussian_reference(1, m=20_000, seed=3)
    x = make(np.random.default_rng(RNG_SEED), 5000)[:, None]  # type: ignore[operator]
    feature = compute_drift(summarise(ref, x), ref).features[0]
    raw = sst.wasserstein_distance(x[:, 0], x_ref[:, 0])
    print(f"\n{case}: W1 raw {raw:.4f}, binned {feature.wasserstein:.4f}")
    assert feature.wasserstein is not None
    assert feature.wasserstein == pytest.approx(raw, rel=rel)
    assert feature.wasserstein >= abs(x.mean() - x_ref.mean()) - 1e-12


def test_exponential_tail_area_matches_numeric_integration() -> None:
    t = np.linspace(-60.0, 0.0, 600_001)
    for pm, sp, qm, sq in [
        (0.1, 0.5, 0.2, 2.0),
        (0.3, 1.0, 0.1, 0.2),
        (0.1, 1.0, 0.1, 1.0),
        (0.0, 1.0, 0.2, 0.7),
        (0.2, 0.0, 0.1, 0.4),
    ]:
        with np.errstate(divide="ignore", over="ignore"):
            fp = pm * np.exp(t / sp) if sp > 0 else np.zeros_like(t)
        numeric = np.trapezoid(np.abs(fp - qm * np.exp(t / sq)), t)
        got = stats.exp_tail_area(np.asarray(pm), np.asarray(sp), np.asarray(qm), np.asarray(sq))
        assert got == pytest.approx(numeric, rel=1e-4, abs=1e-6)
