"""Every guard's decision: pass, fail, no data and too little data (never a pass); the A/B test."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from edgefleet.rollouts import GUARD_KINDS, GuardSpec, RolloutCreate, StepSpec
from registry.rollouts.guards import FAIL, PASS, WAIT, evaluate, evaluate_all, evidence_summary
from registry.rollouts.stats import ArmSample, compare, two_proportion_z
from registry.version_evidence import VersionEvidence

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(**kw: Any) -> VersionEvidence:
    return VersionEvidence(model="m", version=int(kw.pop("version", 2)), since=T0, until=None,
                           **kw)


EMPTY = ev()
#: Evidence with enough of everything, identical on both sides: every guard passes.
FULL = ev(requests=1000, errors=10, latency_ms_p50=5.0, latency_ms_p99=20.0,
          feedback_labelled=500, feedback_correct=450, predictions={"a": 500, "b": 500},
          devices=10, reports=40, device_inferences=1000, fallbacks=20, device_labelled=500,
          device_correct=450, device_predictions=[300, 700],
          events={"switch": 10, "smoke_failed": 0, "crash": 0, "rollback": 0})


def test_every_guard_passes_on_equal_full_evidence() -> None:
    for kind in GUARD_KINDS:
        if kind == "shadow_agreement":
            continue
        r = evaluate(GuardSpec(kind=kind, margin=0.05, min_samples=10), FULL, FULL)
        assert r.decision == PASS, (kind, r.reason)


@pytest.mark.parametrize("kind", GUARD_KINDS)
def test_no_data_never_passes(kind: str) -> None:
    r = evaluate(GuardSpec(kind=kind, margin=0.05, min_samples=1), EMPTY, EMPTY)  # type: ignore[arg-type]
    assert r.decision == WAIT, r.reason
    assert "too little data" in r.reason or "no latency" in r.reason


@pytest.mark.parametrize("kind", [k for k in GUARD_KINDS if k != "shadow_agreement"])
def test_too_little_data_on_the_candidate_waits(kind: str) -> None:
    small = ev(requests=5, errors=0, latency_ms_p99=20.0, feedback_labelled=5, feedback_correct=5,
               predictions={"a": 5}, devices=2, device_inferences=5, fallbacks=0,
               device_labelled=5, device_correct=5, device_predictions=[5])
    r = evaluate(GuardSpec(kind=kind, margin=0.05, min_samples=50), small, FULL)  # type: ignore[arg-type]
    assert r.decision == WAIT, r.reason
    assert "too little data" in r.reason


@pytest.mark.parametrize("kind", ["device_accuracy", "feedback_accuracy", "error_rate",
                                  "fallback_rate", "latency_p99", "prediction_shift"])
def test_too_little_data_on_the_baseline_waits(kind: str) -> None:
    r = evaluate(GuardSpec(kind=kind, margin=0.05, min_samples=50), FULL, EMPTY)  # type: ignore[arg-type]
    assert r.decision == WAIT


def test_device_accuracy_margin() -> None:
    spec = GuardSpec(kind="device_accuracy", margin=0.05, min_samples=100)
    worse = replace(FULL, device_correct=420)  # 0.84 vs 0.90: within 0.05? no (0.84 < 0.85)
    assert evaluate(spec, worse, FULL).decision == FAIL
    close = replace(FULL, device_correct=430)  # 0.86 >= 0.85
    assert evaluate(spec, close, FULL).decision == PASS
    r = evaluate(spec, worse, FULL)
    assert r.candidate == pytest.approx(0.84) and r.baseline == pytest.approx(0.9)
    assert r.threshold == pytest.approx(0.85)


def test_feedback_accuracy_margin() -> None:
    spec = GuardSpec(kind="feedback_accuracy", margin=0.02, min_samples=100)
    assert evaluate(spec, replace(FULL, feedback_correct=430), FULL).decision == FAIL
    assert evaluate(spec, replace(FULL, feedback_correct=445), FULL).decision == PASS


def test_error_and_fallback_rates() -> None:
    spec = GuardSpec(kind="error_rate", margin=0.01, min_samples=100)
    assert evaluate(spec, replace(FULL, errors=25), FULL).decision == FAIL  # 2.5 % > 1 % + 1 %
    assert evaluate(spec, replace(FULL, errors=15), FULL).decision == PASS
    spec = GuardSpec(kind="fallback_rate", margin=0.01, min_samples=100)
    assert evaluate(spec, replace(FULL, fallbacks=40), FULL).decision == FAIL  # 4 % > 2 % + 1 %
    assert evaluate(spec, replace(FULL, fallbacks=25), FULL).decision == PASS


def test_latency_is_relative() -> None:
    spec = GuardSpec(kind="latency_p99", margin=0.5, min_samples=100)
    assert evaluate(spec, replace(FULL, latency_ms_p99=31.0), FULL).decision == FAIL
    assert evaluate(spec, replace(FULL, latency_ms_p99=29.0), FULL).decision == PASS
    missing = replace(FULL, latency_ms_p99=None)
    assert evaluate(spec, missing, FULL).decision == WAIT


def test_device_failures_fail_on_one_crash_even_with_few_devices() -> None:
    spec = GuardSpec(kind="device_failures", margin=0, min_samples=5)
    crashed = ev(devices=1, events={"crash": 1})
    r = evaluate(spec, crashed, FULL)
    assert r.decision == FAIL and "crash 1" in r.reason
    assert evaluate(spec, ev(devices=1, events={"rollback": 0}), FULL).decision == WAIT
    assert evaluate(spec, ev(devices=5), FULL).decision == PASS
    tolerant = GuardSpec(kind="device_failures", margin=2, min_samples=5)
    assert evaluate(tolerant, ev(devices=5, events={"smoke_failed": 2}), FULL).decision == PASS


def test_prediction_shift_uses_rest_then_device_histograms() -> None:
    spec = GuardSpec(kind="prediction_shift", margin=0.1, min_samples=100)
    shifted = replace(FULL, predictions={"a": 950, "b": 50})
    assert evaluate(spec, shifted, FULL).decision == FAIL
    devices_only = ev(device_predictions=[300, 700])
    assert evaluate(spec, devices_only, replace(devices_only, version=1)).decision == PASS
    moved = ev(device_predictions=[900, 100])
    assert evaluate(spec, moved, devices_only).decision == FAIL


def test_shadow_agreement_reads_optional_counts() -> None:
    spec = GuardSpec(kind="shadow_agreement", margin=0.1, min_samples=50)

    class WithShadow:  # the optional attributes on top of a real evidence object
        def __init__(self, base: VersionEvidence, n: int, agree: int) -> None:
            self.__dict__.update(base.__dict__)
            self.shadow_n, self.shadow_agree = n, agree

    assert evaluate(spec, WithShadow(FULL, 100, 95), FULL).decision == PASS  # type: ignore[arg-type]
    assert evaluate(spec, WithShadow(FULL, 100, 80), FULL).decision == FAIL  # type: ignore[arg-type]
    assert evaluate(spec, WithShadow(FULL, 10, 10), FULL).decision == WAIT  # type: ignore[arg-type]
    assert evaluate(spec, FULL, FULL).decision == WAIT  # no shadow figures at all


def test_shadow_agreement_counts_rest_and_device_comparisons_together() -> None:
    spec = GuardSpec(kind="shadow_agreement", margin=0.1, min_samples=50)
    rest_only = replace(FULL, rest_shadow_n=60, rest_shadow_agree=57)
    assert evaluate(spec, rest_only, FULL).decision == PASS
    r = evaluate(spec, replace(FULL, rest_shadow_n=60, rest_shadow_agree=40), FULL)
    assert r.decision == FAIL and r.candidate_n == 60
    # neither side alone reaches min_samples; together they do (30 + 30 = 60 ≥ 50)
    assert evaluate(spec, replace(FULL, shadow_n=30, shadow_agree=30), FULL).decision == WAIT
    assert evaluate(spec, replace(FULL, rest_shadow_n=30, rest_shadow_agree=30),
                    FULL).decision == WAIT
    both = replace(FULL, shadow_n=30, shadow_agree=29, rest_shadow_n=30, rest_shadow_agree=25)
    r = evaluate(spec, both, FULL)
    assert (r.decision, r.candidate_n, r.candidate) == (PASS, 60, pytest.approx(54 / 60))
    # agreeing devices do not hide a disagreeing REST shadow: 30/30 + 10/30 = 40/60 < 0.9
    mixed = replace(FULL, shadow_n=30, shadow_agree=30, rest_shadow_n=30, rest_shadow_agree=10)
    assert evaluate(spec, mixed, FULL).decision == FAIL
    summary = evidence_summary(both)
    assert (summary["shadow_n"], summary["shadow_agree"], summary["rest_shadow_n"],
            summary["rest_shadow_agree"]) == (60, 54, 30, 25)


def test_step_verdict() -> None:
    acc = GuardSpec(kind="device_accuracy", margin=0.05, min_samples=100)
    crash = GuardSpec(kind="device_failures", margin=0, min_samples=1)
    assert evaluate_all([acc, crash], FULL, FULL)[0] == PASS
    assert evaluate_all([acc, crash], replace(FULL, events={"crash": 1}), FULL)[0] == FAIL
    assert evaluate_all([acc, crash], replace(FULL, device_labelled=3), FULL)[0] == WAIT
    assert evaluate_all([], FULL, FULL)[0] == WAIT  # no guards: nothing observed never passes


def test_two_proportion_z_test() -> None:
    z, p = two_proportion_z(450, 500, 480, 500)  # 0.90 vs 0.96
    assert z > 0 and p < 0.001
    z, p = two_proportion_z(450, 500, 452, 500)
    assert p > 0.5
    r = compare([ArmSample("a", 1, 500, 450), ArmSample("b", 2, 500, 480)], alpha=0.05,
                min_samples=200)
    assert r.sufficient and r.significant and r.winner == "b"
    assert r.arms[1]["accuracy"] == pytest.approx(0.96)
    assert "z-test" in r.test
    r = compare([ArmSample("a", 1, 500, 450), ArmSample("b", 2, 100, 99)], alpha=0.05,
                min_samples=200)
    assert not r.sufficient and not r.significant and "too little data" in r.reason
    r = compare([ArmSample("a", 1, 500, 450), ArmSample("b", 2, 500, 452)], alpha=0.05,
                min_samples=200)
    assert r.sufficient and not r.significant and r.winner == "a"


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        StepSpec(bake_s=100, timeout_s=10)
    with pytest.raises(ValueError, match="percent"):
        RolloutCreate(model="m", candidate=2, steps=[StepSpec()])
    with pytest.raises(ValueError, match="must not decrease"):
        RolloutCreate(model="m", candidate=2, steps=[StepSpec(percent=50), StepSpec(percent=5)])
    with pytest.raises(ValueError, match="two variants"):
        RolloutCreate(model="m", strategy="ab", variants=[{"name": "a", "version": 1}])
    with pytest.raises(ValueError, match="candidate"):
        RolloutCreate(model="m")


def test_device_accuracy_is_paired_on_the_candidates_devices() -> None:
    """Baseline per device 0.45/0.65/0.70 (pooled 0.60): the candidate on the hard device only,
    as good as the baseline there, passes paired; pooled it would have failed."""
    spec = GuardSpec(kind="device_accuracy", margin=0.05, min_samples=40)
    base = ev(version=1, device_labelled=300, device_correct=180,
              device_evals={"hard": (100, 45), "mid": (100, 65), "easy": (100, 70)})
    cand = ev(device_labelled=100, device_correct=46, device_evals={"hard": (100, 46)})
    r = evaluate(spec, cand, base)
    assert (r.decision, r.basis) == (PASS, "paired")
    assert r.baseline == pytest.approx(0.45) and r.baseline_n == 100
    assert "paired on 1 device" in r.reason
    no_pairs = replace(cand, device_evals={})
    pooled = evaluate(spec, no_pairs, replace(base, device_evals={}))
    assert (pooled.decision, pooled.basis) == (FAIL, "pooled")  # 0.46 < 0.60 − 0.05
    worse = ev(device_labelled=100, device_correct=38, device_evals={"hard": (100, 38)})
    assert evaluate(spec, worse, base).decision == FAIL  # 0.38 < 0.45 − 0.05, paired


def test_device_accuracy_pairing_keeps_min_samples_on_both_sides() -> None:
    spec = GuardSpec(kind="device_accuracy", margin=0.05, min_samples=40)
    base = ev(version=1, device_labelled=130, device_correct=90,
              device_evals={"a": (30, 20), "b": (100, 70)})
    cand = ev(device_labelled=50, device_correct=35, device_evals={"a": (50, 35)})
    r = evaluate(spec, cand, base)  # the baseline on device a: 30 labelled < 40
    assert (r.decision, r.baseline_n) == (WAIT, 30) and "too little data" in r.reason


def test_device_accuracy_falls_back_to_pooled_and_says_why() -> None:
    spec = GuardSpec(kind="device_accuracy", margin=0.05, min_samples=40)
    base = ev(version=1, device_labelled=200, device_correct=140,
              device_evals={"a": (100, 80), "b": (100, 60)})
    cand = ev(device_labelled=200, device_correct=140, device_evals={"a": (100, 70),
                                                                       "new": (100, 70)})
    r = evaluate(spec, cand, base)
    assert (r.decision, r.basis) == (PASS, "pooled")
    assert r.baseline == pytest.approx(0.70) and "no baseline evidence: new" in r.reason
