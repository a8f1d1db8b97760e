"""Update validation: every kind of bad update is refused with its reason, good ones pass."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from aggregation.errors import SettingsError
from aggregation.report import RoundReport
from aggregation.validation import UpdateValidator
from aggregation.validation_types import RefusalReason, ValidationBounds
from edgefleet.plan import WeightSpec

SPEC = [WeightSpec(name="dense/kernel", shape=[4, 3]), WeightSpec(name="dense/bias", shape=[3])]
GLOBAL = {"dense/kernel": np.zeros((4, 3), np.float32), "dense/bias": np.zeros(3, np.float32)}


def update(delta: float = 0.1, overrides: dict[str, np.ndarray] | None = None
           ) -> dict[str, np.ndarray]:
    w = {k: v + np.float32(delta) for k, v in GLOBAL.items()}
    w.update(overrides or {})
    return w


def content(weights: dict[str, np.ndarray], n: object = 10, **extra: object) -> RecordDict:
    arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()})
    metrics = MetricRecord({"num-examples": n, **extra})  # type: ignore[dict-item]
    return RecordDict({"arrays": arrays, "metrics": metrics,
                       "config": ConfigRecord({"note": "x"})})


def check(c: RecordDict, bounds: ValidationBounds | None = None, declared: int | None = None):
    return UpdateValidator(SPEC, GLOBAL, bounds).validate(7, c, declared_examples=declared)


def test_valid_update_is_accepted_with_its_norm() -> None:
    v = check(content(update(0.5)), declared=10)
    assert v.accepted and v.refusals == []
    assert v.num_examples == 10
    assert v.update_norm == pytest.approx(0.5 * np.sqrt(15))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    k = np.zeros((4, 3), np.float32)
    k[1, 2] = bad
    v = check(content(update(overrides={"dense/kernel": k})))
    assert not v.accepted
    assert v.reasons == [RefusalReason.NOT_FINITE]
    assert "dense/kernel: 1 non-finite" in v.refusals[0].detail


def test_absolute_norm_bound() -> None:
    bounds = ValidationBounds(max_update_norm=1.0)
    assert check(content(update(0.2)), bounds).accepted
    v = check(content(update(5.0)), bounds)
    assert v.reasons == [RefusalReason.NORM]
    assert v.update_norm is not None and v.update_norm > 1.0


def test_norm_that_overflows_float32_is_refused() -> None:
    huge = np.full((4, 3), 3e38, np.float32)  # finite, but its square overflows
    v = check(content(update(overrides={"dense/kernel": huge})))
    assert v.reasons == [RefusalReason.NORM]


def test_relative_norm_bound_uses_the_round_median() -> None:
    val = UpdateValidator(SPEC, GLOBAL, ValidationBounds(max_norm_ratio=5.0))
    verdicts = [val.validate(i, content(update(0.1 + 0.01 * i))) for i in range(4)]
    verdicts.append(val.validate(99, content(update(10.0))))
    median = val.apply_relative_bound(verdicts)
    assert median == pytest.approx(0.12 * np.sqrt(15), rel=1e-5)
    assert [v.accepted for v in verdicts] == [True, True, True, True, False]
    assert verdicts[-1].reasons == [RefusalReason.NORM]
    assert "round median" in verdicts[-1].refusals[0].detail


def test_relative_bound_needs_enough_updates() -> None:
    val = UpdateValidator(SPEC, GLOBAL, ValidationBounds(max_norm_ratio=2.0))
    verdicts = [val.validate(1, content(update(0.1))), val.validate(2, content(update(50.0)))]
    assert val.apply_relative_bound(verdicts) is None
    assert all(v.accepted for v in verdicts)


def test_wrong_shape_is_refused() -> None:
    v = check(content(update(overrides={"dense/bias": np.zeros(4, np.float32)})))
    assert v.reasons == [RefusalReason.SHAPE]
    assert "dense/bias" in v.refusals[0].detail


def test_wrong_dtype_is_refused() -> None:
    v = check(content(update(overrides={"dense/kernel": np.zeros((4, 3), np.float64)})))
    assert v.reasons == [RefusalReason.DTYPE]


def test_declared_dtype_that_lies_about_the_data_is_refused() -> None:
    real = Array(np.zeros((4, 3), np.float64))
    liar = Array(dtype="float32", shape=(4, 3), stype=real.stype, data=real.data)
    c = content(update())
    next(iter(c.array_records.values()))["dense/kernel"] = liar
    v = check(c)
    assert v.reasons == [RefusalReason.DTYPE]
    assert "decoded" in v.refusals[0].detail


def test_undecodable_array_is_malformed() -> None:
    garbage = Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=b"\x00garbage")
    c = content(update())
    next(iter(c.array_records.values()))["dense/bias"] = garbage
    assert check(c).reasons == [RefusalReason.MALFORMED]


@pytest.mark.parametrize(
    "weights",
    [
        {"dense/kernel": np.zeros((4, 3), np.float32)},  # missing bias
        {**GLOBAL, "extra": np.zeros(1, np.float32)},  # unexpected name
        {"kernel": np.zeros((4, 3), np.float32), "dense/bias": np.zeros(3, np.float32)},
    ],
)
def test_wrong_names_are_refused(weights: dict[str, np.ndarray]) -> None:
    assert check(content(weights)).reasons == [RefusalReason.NAMES]


def test_two_array_records_are_malformed() -> None:
    c = content(update())
    c["more"] = ArrayRecord({"x": Array(np.zeros(1, np.float32))})
    assert check(c).reasons == [RefusalReason.MALFORMED]


@pytest.mark.parametrize("n", [0, -5, 2.5, float("nan"), float("inf"), [10], 10**12])
def test_implausible_num_examples_is_refused(n: object) -> None:
    assert check(content(update(), n=n)).reasons == [RefusalReason.NUM_EXAMPLES]


def test_num_examples_above_the_declared_or_configured_maximum() -> None:
    assert check(content(update(), n=500), declared=100).reasons == [RefusalReason.NUM_EXAMPLES]
    assert check(content(update(), n=126), declared=100).reasons == [RefusalReason.NUM_EXAMPLES]
    assert check(content(update(), n=125), declared=100).accepted  # 25 % slack: labels grow
    capped = ValidationBounds(max_num_examples=50)
    assert check(content(update(), n=60), capped).reasons == [RefusalReason.NUM_EXAMPLES]
    assert check(content(update(), n=50.0), capped, declared=80).accepted
    strict = ValidationBounds(declared_slack=0.0)
    assert check(content(update(), n=101), strict, declared=100).reasons == [
        RefusalReason.NUM_EXAMPLES]


def test_missing_num_examples_is_refused() -> None:
    c = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in update().items()}),
                    "metrics": MetricRecord({"loss": 0.3})})
    assert check(c).reasons == [RefusalReason.NUM_EXAMPLES]


def test_several_reasons_are_all_reported_and_counted() -> None:
    bad = update(overrides={"dense/bias": np.full(3, np.nan, np.float32)})
    v = check(content(bad, n=-1))
    assert v.reasons == sorted([RefusalReason.NUM_EXAMPLES, RefusalReason.NOT_FINITE])
    report = RoundReport(server_round=1)
    report.record([v, check(content(update()))])
    assert report.accepted == [7] and list(report.refused) == [7]
    assert report.refused_count() == 1
    assert report.refused_count(RefusalReason.NOT_FINITE) == 1
    assert report.refused_count(RefusalReason.NORM) == 0
    assert report.to_dict()["refused_reasons"] == {"not-finite": 1, "num-examples": 1}


def test_integer_weights_are_compared_without_wrap_around() -> None:
    spec = [WeightSpec(name="counts", shape=[2], dtype="uint8")]
    val = UpdateValidator(spec, {"counts": np.array([250, 0], np.uint8)})
    c = RecordDict({"arrays": ArrayRecord({"counts": Array(np.array([0, 3], np.uint8))}),
                    "metrics": MetricRecord({"num-examples": 1})})
    v = val.validate(1, c)
    assert v.accepted and v.update_norm == pytest.approx(np.hypot(250, 3))


@pytest.mark.parametrize(
    "kwargs",
    [{"max_update_norm": 0.0}, {"max_norm_ratio": 0.5}, {"min_updates_for_median": 1},
     {"max_num_examples": 0}],
)
def test_bounds_out_of_range_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(SettingsError):
        ValidationBounds(**kwargs)  # type: ignore[arg-type]
