"""The device-side drift summary: merge laws (property-based), layout, bounds and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgefleet.drift import (
    SCHEMA_VERSION,
    DriftAccumulator,
    DriftSummary,
    ReferenceProfile,
    build_reference,
    fold_counts,
    with_predictions,
)
from edgefleet.errors import InputError, SummaryError
from edgefleet.wire import TelemetryReport

N_CLASSES = 3
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_reference(n_features: int, seed: int, n_bins: int = 6) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, n_features))
    if n_features > 1:
        x[:, 1] = rng.integers(0, 3, size=300)  # a discrete feature: edges between values
    y = rng.integers(0, N_CLASSES, size=300)
    return build_reference(x, y, [f"f{j}" for j in range(n_features)], N_CLASSES, n_bins=n_bins)


def summarise(ref: ReferenceProfile, x: np.ndarray, p: np.ndarray, y: np.ndarray) -> DriftSummary:
    acc = DriftAccumulator(ref, model="m", version=1)
    acc.update(x, p, y)
    return acc.to_summary()


@st.composite
def batches(draw: st.DrawFn, n_parts: int = 3) -> tuple[ReferenceProfile, list[tuple]]:
    """A reference and ``n_parts`` batches of rows (NaN, ±inf, out-of-range values included)."""
    n_features = draw(st.integers(1, 4))
    ref = make_reference(n_features, draw(st.integers(0, 2**16)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_parts):
        n = draw(st.integers(0, 40))
        x = rng.normal(scale=draw(st.sampled_from([0.5, 1.0, 4.0])), size=(n, n_features))
        x[rng.random(x.shape) < 0.05] = np.nan
        x[rng.random(x.shape) < 0.02] = np.inf
        p = rng.dirichlet(np.ones(N_CLASSES), size=n)
        y = rng.integers(-1, N_CLASSES, size=n)
        parts.append((x, p, y))
    return ref, parts


def assert_same(a: DriftSummary, b: DriftSummary) -> None:
    """Equal counts and ranges exactly; moments up to floating-point rounding."""
    da, db = a.model_dump(), b.model_dump()
    for key in ("mean", "m2"):
        np.testing.assert_allclose(da.pop(key), db.pop(key), rtol=1e-9, atol=1e-9)
    assert da == db


@SETTINGS
@given(batches(n_parts=2))
def test_merge_is_commutative_exactly(case: tuple) -> None:
    ref, [(x1, p1, y1), (x2, p2, y2)] = case
    a, b = summarise(ref, x1, p1, y1), summarise(ref, x2, p2, y2)
    assert a.merge(b) == b.merge(a)


@SETTINGS
@given(batches(n_parts=3))
def test_merge_is_associative(case: tuple) -> None:
    ref, parts = case
    a, b, c = (summarise(ref, *part) for part in parts)
    assert_same(a.merge(b).merge(c), a.merge(b.merge(c)))


@SETTINGS
@given(batches(n_parts=2))
def test_merge_of_halves_equals_summary_of_whole(case: tuple) -> None:
    ref, [(x1, p1, y1), (x2, p2, y2)] = case
    whole = summarise(ref, np.vstack([x1, x2]), np.vstack([p1, p2]), np.concatenate([y1, y2]))
    assert_same(summarise(ref, x1, p1, y1).merge(summarise(ref, x2, p2, y2)), whole)


@SETTINGS
@given(batches(n_parts=1))
def test_summary_matches_direct_computation(case: tuple) -> None:
    ref, [(x, p, y)] = case
    s = summarise(ref, x, p, y)
    for j, fr in enumerate(ref.features):
        col = x[:, j]
        fin = col[np.isfinite(col)]
        assert s.nan_counts[j] == col.size - fin.size
        direct = np.histogram(fin, bins=[-np.inf, *fr.bin_edges, np.inf])[0]
        assert fold_counts(s.bin_counts[j]) == direct.tolist()
        assert s.bin_counts[j][0] == int((fin < fr.min).sum())
        assert s.bin_counts[j][-1] == int((fin > fr.max).sum())
        if fin.size:
            assert s.min[j] == fin.min() and s.max[j] == fin.max()
            np.testing.assert_allclose(s.mean[j], fin.mean(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(
                s.m2[j], ((fin - fin.mean()) ** 2).sum(), rtol=1e-9, atol=1e-9
            )
    pred = p.argmax(axis=1)
    assert s.class_counts == np.bincount(pred, minlength=N_CLASSES).tolist()
    known = y >= 0
    assert s.label_total == np.bincount(y[known], minlength=N_CLASSES).tolist()
    assert s.label_correct == np.bincount(y[known & (pred == y)], minlength=N_CLASSES).tolist()


@SETTINGS
@given(batches(n_parts=1), st.integers(1, 7))
def test_buffered_rows_equal_one_batch(case: tuple, buffer_size: int) -> None:
    ref, [(x, p, y)] = case
    acc = DriftAccumulator(ref, model="m", version=1, buffer_size=buffer_size)
    for row, probs, label in zip(x, p, y, strict=True):
        acc.observe(row, probs, int(label))
    assert acc.n == len(x)
    assert_same(acc.to_summary(), summarise(ref, x, p, y))


@SETTINGS
@given(batches(n_parts=1), st.integers(1, 6))
def test_size_is_bounded_by_the_reference_not_the_data(case: tuple, repeat: int) -> None:
    ref, [(x, p, y)] = case
    small = summarise(ref, x[:1], p[:1], y[:1])
    big = summarise(
        ref, np.tile(x, (repeat * 50, 1)), np.tile(p, (repeat * 50, 1)), np.tile(y, repeat * 50)
    )

    def shape(s: DriftSummary) -> list[int]:
        return [len(r) for r in s.bin_counts] + [
            len(v) for k, v in s.model_dump().items() if isinstance(v, list)
        ]

    assert shape(small) == shape(big)
    n_numbers = sum(len(f.bin_edges) + 3 + 5 for f in ref.features) + 3 * N_CLASSES + 7
    # every number fits in 25 characters: the JSON size depends on the layout only
    assert len(big.model_dump_json()) <= 400 + 25 * n_numbers


def test_empty_merge_is_identity_and_round_trips() -> None:
    ref = make_reference(3, 1)
    rng = np.random.default_rng(0)
    s = summarise(
        ref, rng.normal(size=(50, 3)), rng.dirichlet(np.ones(3), 50), rng.integers(-1, 3, 50)
    )
    empty = DriftSummary.empty(ref, model="m", version=1)
    assert s.merge(empty) == s == empty.merge(s)
    assert DriftSummary.parse(s.model_dump_json()) == s
    acc = DriftAccumulator.from_summary(s, ref)
    assert acc.to_summary() == s
    assert acc.take() == s and acc.n == 0 and acc.to_summary() == empty


def test_underflow_and_overflow_fold_into_the_open_ended_bins() -> None:
    ref = make_reference(1, 2)
    fr = ref.features[0]
    x = np.asarray([[fr.min - 1.0], [fr.min], [fr.max], [fr.max + 1.0], [np.nan], [-np.inf]])
    s = summarise(ref, x, np.full((6, 3), 1 / 3), np.full(6, -1))
    row = s.bin_counts[0]
    assert len(row) == len(fr.bin_edges) + 3
    assert (row[0], row[1], row[-2], row[-1]) == (1, 1, 1, 1)
    assert s.nan_counts == [2] and s.counts == [4]
    assert s.min == [fr.min - 1.0] and s.max == [fr.max + 1.0]


def test_reference_with_predictions_and_fingerprint() -> None:
    ref = make_reference(2, 3)
    probs = np.random.default_rng(0).dirichlet(np.ones(3), 100)
    ref2 = with_predictions(ref, probs)
    assert sum(ref2.prediction_counts or []) == 100 and sum(ref2.confidence_counts or []) == 100
    assert ref2.fingerprint == ref.fingerprint  # predictions do not change the layout
    assert make_reference(2, 4).fingerprint != ref.fingerprint


# --- refusals ------------------------------------------------------------------------------
@pytest.fixture
def good() -> tuple[ReferenceProfile, DriftSummary]:
    ref = make_reference(2, 5)
    rng = np.random.default_rng(1)
    return ref, summarise(
        ref, rng.normal(size=(30, 2)), rng.dirichlet(np.ones(3), 30), rng.integers(-1, 3, 30)
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": SCHEMA_VERSION + 1}, "schema version 2 is not supported"),
        ({"schema_version": None}, "schema version None is not supported"),
        ({"nan_counts": [-1, 0]}, "negative counts"),
        ({"mean": [float("nan"), 0.0]}, "NaN/inf moments"),
        ({"m2": [float("inf"), 0.0]}, "NaN/inf moments"),
        ({"n": 31}, "bins sum to"),
        ({"class_counts": [0, 0, 0]}, "same total"),
        ({"reference_fingerprint": "xyz"}, "64 lowercase hex"),
        ({"min": [None, 0.0]}, "min/max must be finite"),
        ({"label_correct": [99, 0, 0]}, "label_correct exceeds"),
        ({"bin_counts": [[30], [30]]}, "3.."),
        ({"n": 2**70}, "counts must be in 0.."),  # beyond int64
        ({"nan_counts": [0, 2**51]}, "counts must be in 0.."),  # beyond MAX_COUNT
    ],
)
def test_invalid_summaries_are_refused(
    good: tuple[ReferenceProfile, DriftSummary], change: dict, message: str
) -> None:
    _, s = good
    data = {**s.model_dump(), **change}
    with pytest.raises(SummaryError, match=message):
        DriftSummary.model_validate(data)
    with pytest.raises(SummaryError, match=message):
        DriftSummary.parse(json.dumps(data))  # the wire path


def test_each_feature_is_checked_and_named(good: tuple) -> None:
    """The per-feature checks (run over all features at once) name the first bad features."""
    _, s = good
    data = s.model_dump()
    wrapped = [list(r) for r in data["bin_counts"]]
    wrapped[1][1] += 2**62  # a row whose int64 sum would wrap is refused, not summed
    hi = data["max"][1]
    cases = [
        ({"mean": [data["mean"][0], hi + 1.0]}, "feature 1: mean .* outside"),
        ({"m2": [data["m2"][0], 1e9]}, "feature 1: m2 too large"),
        ({"min": [data["max"][0] + 1.0, data["min"][1]]}, "feature 0: min/max must be finite"),
        ({"max": [float("nan"), hi]}, "feature 0: min/max must be finite"),
        ({"bin_counts": wrapped}, "counts must be in 0.."),
    ]
    for change, message in cases:
        with pytest.raises(SummaryError, match=message):
            DriftSummary.parse(json.dumps({**data, **change}))


def test_a_huge_range_is_checked_without_overflow(good: tuple) -> None:
    """(max - min)² beyond float range bounds m2 by inf instead of raising OverflowError."""
    _, s = good
    data = s.model_dump()
    wide = DriftSummary.parse(json.dumps({**data, "max": [1e300, data["max"][1]]}))
    assert wide.max[0] == 1e300
    with pytest.raises(SummaryError, match=r"feature 0: mean .* outside"):
        DriftSummary.parse({**data, "min": [-1e300, data["min"][1]], "mean": [-1e301, 0.0]})


def test_type_errors_are_summary_errors_when_parsed(good: tuple) -> None:
    _, s = good
    with pytest.raises(SummaryError, match="invalid drift summary: n: Input should be a valid"):
        DriftSummary.parse({**s.model_dump(), "n": "many"})
    with pytest.raises(SummaryError, match="invalid drift summary: Invalid JSON"):
        DriftSummary.parse(b"{not json")
    with pytest.raises(SummaryError, match="extra_field"):
        DriftSummary(**{**s.model_dump(), "extra_field": 1})


def test_nested_in_a_telemetry_report_it_is_a_validation_error(good: tuple) -> None:
    """FastAPI turns a ValidationError of a request body into a 422 with these messages."""
    _, s = good
    report = {
        "idempotency_key": "k" * 12,
        "model": "m",
        "version": 1,
        "window_start": "2026-01-05T08:00:00Z",
        "window_end": "2026-01-05T09:00:00Z",
    }
    assert TelemetryReport.model_validate({**report, "drift": s.model_dump()}).drift == s
    with pytest.raises(ValidationError, match="schema version 7 is not supported"):
        TelemetryReport.model_validate({**report, "drift": {**s.model_dump(), "schema_version": 7}})


def test_mismatched_bins_are_refused_and_state_is_kept(good: tuple) -> None:
    ref, s = good
    other_ref = make_reference(2, 6)
    other = summarise(other_ref, np.zeros((5, 2)), np.full((5, 3), 1 / 3), np.full(5, -1))
    with pytest.raises(SummaryError, match="different reference bins"):
        s.merge(other)
    acc = DriftAccumulator.from_summary(s, ref)
    for bad in (
        other,
        s.model_copy(update={"version": 2}),
        DriftSummary.empty(other_ref, model="m", version=1),
    ):
        with pytest.raises(SummaryError):
            acc.merge(bad)
        assert acc.to_summary() == s
    with pytest.raises(SummaryError, match="do not match the reference"):
        DriftAccumulator.from_summary(other, ref)
    acc.merge(s)
    assert acc.n == 2 * s.n


def test_bad_rows_are_refused_and_state_is_kept(good: tuple) -> None:
    ref, s = good
    acc = DriftAccumulator.from_summary(s, ref)
    probs = np.full((2, 3), 1 / 3)
    bad_calls = [
        lambda: acc.update(np.zeros((2, 3))),
        lambda: acc.update(np.zeros((2, 2)), np.full((2, 3), np.nan)),
        lambda: acc.update(np.zeros((2, 2)), probs, np.asarray([0, 3])),
        lambda: acc.update(np.zeros((2, 2)), None, np.asarray([0, 1])),
        lambda: acc.observe(np.zeros(3)),
        lambda: acc.observe(np.zeros(2), np.zeros(4)),
        lambda: acc.observe(np.zeros(2), 0.5),  # type: ignore[arg-type]
        lambda: acc.observe(np.zeros(2), [0.5, np.nan, 0.5]),  # type: ignore[arg-type]
        lambda: acc.observe(np.zeros(2), None, 1),
    ]
    for call in bad_calls:
        with pytest.raises(InputError):
            call()
        assert acc.to_summary() == s
