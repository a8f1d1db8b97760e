"""The plan manifest and weights file format, on a real built plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.errors import PlanFormatError, PlanMismatchError, WeightsError
from edgefleet.plan import (
    PlanManifest,
    check_weights,
    read_weights_metadata,
    sha256_bytes,
    sha256_file,
    weights_from_bytes,
    weights_to_bytes,
)
from edgefleet.runtime import MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE


@pytest.fixture
def manifest(digits_plan_dir: Path) -> PlanManifest:
    return PlanManifest.load(digits_plan_dir / MANIFEST_FILE)


def test_manifest_json_round_trip(manifest: PlanManifest) -> None:
    again = PlanManifest.from_json(manifest.to_json())
    assert again == manifest
    assert manifest.n_parameters == 64 * 64 + 64 + 64 * 10 + 10
    assert manifest.input.n_features == 64 and manifest.output.n_classes == 10
    assert manifest.input.sample_shape == (64,)
    assert manifest.signatures == ["infer", "train", "get_weights", "set_weights"]


def test_manifest_refuses_bad_json(manifest: PlanManifest) -> None:
    with pytest.raises(PlanFormatError, match="invalid plan manifest"):
        PlanManifest.from_json("{}")
    with pytest.raises(PlanFormatError, match="invalid plan manifest"):
        PlanManifest.from_json(manifest.to_json().replace('"edgefleet-plan/1"', '"other/9"'))
    with pytest.raises(PlanFormatError):
        PlanManifest.from_json(b"\x00\x01")


def test_plan_hashes(digits_plan_dir: Path, manifest: PlanManifest) -> None:
    plan = (digits_plan_dir / PLAN_FILE).read_bytes()
    assert sha256_bytes(plan) == sha256_file(digits_plan_dir / PLAN_FILE) == manifest.plan_sha256
    manifest.check_plan_bytes(plan)
    with pytest.raises(PlanMismatchError, match="does not match its manifest"):
        manifest.check_plan_bytes(plan + b"\x00")


def test_weights_bytes_round_trip(digits_plan_dir: Path, manifest: PlanManifest) -> None:
    raw = (digits_plan_dir / WEIGHTS_FILE).read_bytes()
    weights = weights_from_bytes(raw, manifest=manifest)
    assert read_weights_metadata(raw) == {"format": "edgefleet-weights/1",
                                          "plan_sha256": manifest.plan_sha256}
    again = weights_to_bytes(weights, plan_sha256=manifest.plan_sha256)
    back = weights_from_bytes(again, manifest=manifest)
    assert all(back[k].tobytes() == weights[k].tobytes() for k in weights)
    unbound = weights_from_bytes(weights_to_bytes(weights), manifest=manifest)  # no binding: ok
    assert set(unbound) == set(weights)


@pytest.mark.parametrize(
    "data", [b"", b"\x01\x00", b"\xff" * 8 + b"{}", b"\x04" + b"\x00" * 7 + b"nope"]
)
def test_unreadable_weights(data: bytes) -> None:
    with pytest.raises(WeightsError, match="unreadable weights file"):
        weights_from_bytes(data)
    with pytest.raises(WeightsError, match="unreadable weights file"):
        read_weights_metadata(data)


def test_check_weights_names_every_problem(manifest: PlanManifest) -> None:
    good = {w.name: np.zeros(w.shape, np.float32) for w in manifest.weights}
    check_weights(manifest.weights, good)
    bad = dict(good)
    bad.pop("dense_0_bias")
    bad["dense_1_kernel"] = np.zeros((10, 64), np.float32)
    bad["dense_1_bias"] = np.zeros(10, np.int32)
    bad["surplus"] = np.zeros(1, np.float32)
    with pytest.raises(WeightsError) as info:
        check_weights(manifest.weights, bad)
    msg = str(info.value)
    for part in ("missing ['dense_0_bias']", "unexpected ['surplus']",
                 "dense_1_kernel: shape [10, 64], expected [64, 10]", "dense_1_bias: dtype int32"):
        assert part in msg
