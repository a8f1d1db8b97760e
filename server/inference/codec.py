"""Open Inference Protocol (V2) tensors ⇄ numpy arrays.

Requests carry tensors as ``{"name", "shape", "datatype", "data"}`` with ``data`` the row-major
flattening of the tensor (nested lists of the same shape are accepted too). The plan takes one
``float32 [n, *sample_shape]`` input: any numeric V2 datatype is accepted and cast to float32
(``BYTES`` and ``BOOL`` are refused, and so are booleans in the data of a numeric tensor), the
shape must be ``[n, *sample_shape]`` with ``1 <= n <= max_batch``, the element count must match
the shape, and every value must be a finite number. Anything else is an
:class:`edgefleet.errors.InputError` naming the problem.

Responses carry the class probabilities (``FP32 [n, n_classes]``, named as the manifest's output)
and the most probable class label (``BYTES [n]``, named ``label``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.errors import InputError
from edgefleet.plan import PlanManifest
from edgefleet.wire import InferTensor, RequestedOutput

__all__ = ["LABEL_OUTPUT", "NUMERIC_TYPES", "decode_input", "encode_outputs", "output_metadata"]

LABEL_OUTPUT = "label"
NUMERIC_TYPES = {
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
}


def decode_input(
    inputs: Sequence[InferTensor], manifest: PlanManifest, *, max_batch: int
) -> np.ndarray:
    """The plan's input array from the request's tensors (see the module notes)."""
    spec = manifest.input
    if len(inputs) != 1:
        raise InputError(
            f"the model takes exactly one input tensor ({spec.name!r}), got {len(inputs)}"
        )
    tensor = inputs[0]
    if tensor.name != spec.name:
        raise InputError(f"unknown input {tensor.name!r}: the model's input is {spec.name!r}")
    if tensor.datatype not in NUMERIC_TYPES:
        raise InputError(f"datatype {tensor.datatype} is not supported: send numbers (e.g. FP32)")
    sample = tuple(spec.sample_shape)
    shape = tuple(tensor.shape)
    if len(shape) != 1 + len(sample) or shape[1:] != sample:
        raise InputError(
            f"shape {list(shape)} does not fit the model: "
            f"expected [n, {', '.join(map(str, sample))}]"
        )
    n = shape[0]
    if not 1 <= n <= max_batch:
        raise InputError(f"batch size {n} is outside 1..{max_batch}")
    array = _numeric_array(tensor.data)
    expected = int(np.prod(shape))
    if array.size != expected:
        raise InputError(f"data has {array.size} elements; shape {list(shape)} needs {expected}")
    if array.ndim > 1 and array.shape != shape:
        raise InputError(f"nested data has shape {list(array.shape)}, declared {list(shape)}")
    out = array.astype(np.float32, copy=False).reshape(shape)
    if not np.all(np.isfinite(out)):
        raise InputError("data contains NaN or infinite values (or values too large for FP32)")
    return out


def _contains_bool(data: list[Any]) -> bool:
    """Whether any element of ``data`` (nested lists included) is a JSON boolean."""
    stack: list[Any] = [data]
    while stack:
        for item in stack.pop():
            if isinstance(item, bool):
                return True
            if isinstance(item, list):
                stack.append(item)
    return False


def _numeric_array(data: list[Any]) -> np.ndarray:
    # numpy would silently turn [true, 0.5] into [1.0, 0.5]: a boolean is never a number here
    if _contains_bool(data):
        raise InputError("data contains booleans; the model takes numbers")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise InputError(f"data is not a regular (rectangular) array: {exc}") from None
    if array.dtype.kind not in "iuf":
        if array.dtype.kind == "b":
            raise InputError("data contains booleans; the model takes numbers")
        raise InputError("data contains non-numeric values")
    return array


def encode_outputs(
    probs: np.ndarray, manifest: PlanManifest, requested: Sequence[RequestedOutput] | None
) -> list[InferTensor]:
    """The response tensors (all, or the ``requested`` ones in the requested order)."""
    name = manifest.output.name
    available = {name, LABEL_OUTPUT}
    names = [r.name for r in requested] if requested else [name, LABEL_OUTPUT]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(f"unknown output(s) {unknown}: the model offers {sorted(available)}")
    out = []
    for n in names:
        if n == name:
            out.append(
                InferTensor(
                    name=name,
                    shape=list(probs.shape),
                    datatype="FP32",
                    data=probs.astype(np.float32).ravel().tolist(),
                )
            )
        else:
            labels = manifest.output.class_labels
            picked = [labels[i] for i in np.argmax(probs, axis=1).tolist()]
            out.append(
                InferTensor(name=LABEL_OUTPUT, shape=[len(picked)], datatype="BYTES", data=picked)
            )
    return out


def output_metadata(manifest: PlanManifest) -> list[dict[str, Any]]:
    """V2 metadata of the outputs (``-1`` marks the batch dimension)."""
    return [
        {
            "name": manifest.output.name,
            "datatype": "FP32",
            "shape": [-1, manifest.output.n_classes],
        },
        {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
    ]
