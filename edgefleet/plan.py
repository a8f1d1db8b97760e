"""The model-plan manifest and the weights file format.

A *plan* is three artifacts that travel together:

``plan.tflite``
    A TFLite flatbuffer, converted with TFLite builtins only, with four signatures:
    ``infer`` (dynamic batch, raw features in, class probabilities out), ``train`` (one SGD step
    on a static batch of ``train_batch_size``; inputs ``x``, ``y``, ``lr``; returns ``loss``),
    ``get_weights`` (returns every trainable variable by name) and ``set_weights`` (takes them).
    Preprocessing (scaling) happens *inside* the graph, so callers always pass raw features.
``manifest.json``
    A :class:`PlanManifest`: the input/output specs, the ordered weight spec, the train batch
    size, the plan's sha256, the versions that built it and the reference statistics of the
    training data that drift monitoring compares against.
``weights.safetensors``
    The weights, apart from the plan, in safetensors (no pickle). A new global version is new
    weights for the same plan; :func:`save_weights` / :func:`load_weights` read and write them and
    check them against the manifest's weight spec.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.drift.reference import ReferenceProfile
from edgefleet.errors import PlanFormatError, PlanMismatchError, WeightsError

MANIFEST_FORMAT: Final = "edgefleet-plan/1"
WEIGHTS_FORMAT = "edgefleet-weights/1"
SIGNATURES = ("infer", "train", "get_weights", "set_weights")
DTypeName = Literal["float32", "int32", "int64", "uint8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preprocessing(_Strict):
    """What the plan does to raw features before the first layer (inside the graph).

    ``kind="affine"`` computes ``(x - shift) * scale`` per feature (or with scalars).
    """

    kind: Literal["none", "affine"] = "none"
    shift: list[float] | float = 0.0
    scale: list[float] | float = 1.0


class InputSpec(_Strict):
    """The single input tensor of ``infer`` (and ``x`` of ``train``)."""

    name: str = "x"
    dtype: DTypeName = "float32"
    shape: list[int | None] = Field(description="None marks the dynamic batch dimension")
    feature_names: list[str]
    preprocessing: Preprocessing = Preprocessing()

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.shape[1:] if d is not None)


class OutputSpec(_Strict):
    """The output of ``infer``: class probabilities over ``class_labels``."""

    name: str = "probabilities"
    class_labels: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.class_labels)


class WeightSpec(_Strict):
    """One trainable variable, in the order ``set_weights`` takes them."""

    name: str
    shape: list[int]
    dtype: DTypeName = "float32"


class PlanManifest(_Strict):
    """Everything a device, the server or Flower needs to know about a plan besides its bytes."""

    format: Literal["edgefleet-plan/1"] = MANIFEST_FORMAT
    name: str = Field(description="model name, e.g. 'digits-mlp'")
    task: Literal["classification"] = "classification"
    architecture: dict[str, Any] = Field(
        description="how the model was defined, e.g. {'kind': 'mlp', 'hidden': [64]}"
    )
    input: InputSpec
    output: OutputSpec
    weights: list[WeightSpec]
    train_batch_size: int = Field(gt=0)
    signatures: list[str] = Field(default_factory=lambda: list(SIGNATURES))
    plan_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    plan_size: int = Field(gt=0)
    built_with: dict[str, str] = Field(
        description="versions that built it: tensorflow, python, ..."
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    reference: ReferenceProfile | None = None

    @property
    def n_parameters(self) -> int:
        return int(sum(int(np.prod(w.shape)) for w in self.weights))

    def weight_names(self) -> list[str]:
        return [w.name for w in self.weights]

    # --- (de)serialisation -------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> PlanManifest:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise PlanFormatError(f"invalid plan manifest: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> PlanManifest:
        return cls.from_json(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    # --- consistency ----------------------------------------------------------------------
    def check_plan_bytes(self, plan: bytes) -> None:
        """Refuse plan bytes that are not the ones this manifest describes."""
        digest = sha256_bytes(plan)
        if digest != self.plan_sha256 or len(plan) != self.plan_size:
            raise PlanMismatchError(
                f"plan does not match its manifest: sha256 {digest[:12]}…/{len(plan)} bytes, "
                f"manifest says {self.plan_sha256[:12]}…/{self.plan_size} bytes"
            )

    def check_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Refuse weights whose names, shapes or dtypes differ from the weight spec."""
        check_weights(self.weights, weights)


def check_weights(spec: list[WeightSpec], weights: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`WeightsError` naming every difference between ``weights`` and ``spec``."""
    want = {w.name: w for w in spec}
    problems: list[str] = []
    missing = sorted(set(want) - set(weights))
    extra = sorted(set(weights) - set(want))
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    for name, w in want.items():
        if name not in weights:
            continue
        arr = weights[name]
        if not isinstance(arr, np.ndarray):
            problems.append(f"{name}: not an array ({type(arr).__name__})")
            continue
        if list(arr.shape) != list(w.shape):
            problems.append(f"{name}: shape {list(arr.shape)}, expected {w.shape}")
        if arr.dtype != np.dtype(w.dtype):
            problems.append(f"{name}: dtype {arr.dtype}, expected {w.dtype}")
    if problems:
        raise WeightsError("weights do not match the plan: " + "; ".join(problems))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- weights files (safetensors) -------------------------------------------------------------
def weights_to_bytes(
    weights: Mapping[str, np.ndarray], *, plan_sha256: str | None = None
) -> bytes:
    """Serialise weights to safetensors bytes; metadata records the format and the plan."""
    from safetensors.numpy import save

    meta = {"format": WEIGHTS_FORMAT}
    if plan_sha256:
        meta["plan_sha256"] = plan_sha256
    return save({k: np.ascontiguousarray(v) for k, v in weights.items()}, metadata=meta)


def weights_from_bytes(
    data: bytes, *, manifest: PlanManifest | None = None
) -> dict[str, np.ndarray]:
    """Parse safetensors bytes; with ``manifest``, also check names, shapes, dtypes and plan."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        weights = load(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise WeightsError(f"unreadable weights file: {exc}") from exc
    if manifest is not None:
        meta = read_weights_metadata(data)
        bound = meta.get("plan_sha256")
        if bound and bound != manifest.plan_sha256:
            raise PlanMismatchError(
                f"weights were made for plan {bound[:12]}…, not {manifest.plan_sha256[:12]}…"
            )
        manifest.check_weights(weights)
    return weights


def read_weights_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (empty when absent)."""
    if len(data) < 8:
        raise WeightsError("unreadable weights file: shorter than its header")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise WeightsError("unreadable weights file: bad header length")
    try:
        header = json.loads(data[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"unreadable weights file: {exc}") from exc
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def save_weights(
    path: str | Path, weights: Mapping[str, np.ndarray], *, plan_sha256: str | None = None
) -> None:
    Path(path).write_bytes(weights_to_bytes(weights, plan_sha256=plan_sha256))


def load_weights(
    path: str | Path, *, manifest: PlanManifest | None = None
) -> dict[str, np.ndarray]:
    return weights_from_bytes(Path(path).read_bytes(), manifest=manifest)
