"""Open Inference Protocol (V2) JSON on the device: the same request and response bodies as the
server's ``/v2/models/{name}/infer`` (schemas in :mod:`edgefleet.wire`).

A request carries one input tensor: ``shape`` ``[n, *sample_shape]`` (a single example may be sent
as ``[n_features]``), a numeric ``datatype`` and ``data`` flat in row-major order (nested lists are
accepted and flattened). A response carries ``probabilities`` (``FP32 [n, n_classes]``) and
``label`` (``BYTES [n]``, the most probable class label), and in ``parameters`` which ``path``
answered (``"local"`` or ``"fallback"``) — the server's own parameters are kept as they came.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_client.errors import InvalidInputError, ServerError
from edgefleet.wire import InferenceRequest, InferenceResponse, InferTensor

_NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
PROBABILITIES = "probabilities"
LABEL = "label"


def request_from_array(x: np.ndarray, input_name: str = "x", *, id: str | None = None
                       ) -> InferenceRequest:
    """An ``FP32`` V2 request for features ``x`` (any numeric dtype, cast to float32)."""
    arr = np.asarray(x, dtype=np.float32)
    return InferenceRequest(id=id, inputs=[InferTensor(
        name=input_name, shape=list(arr.shape), datatype="FP32", data=arr.reshape(-1).tolist())])


def array_from_request(request: InferenceRequest, input_name: str | None = None) -> np.ndarray:
    """The features of a V2 request as an array of its declared shape.

    Raises
    ------
    InvalidInputError
        Not exactly one input (or none named ``input_name``), a non-numeric datatype, or data
        whose element count does not match the shape.
    """
    inputs = request.inputs
    if input_name is not None and len(inputs) > 1:
        inputs = [t for t in inputs if t.name == input_name]
    if len(inputs) != 1:
        raise InvalidInputError(
            f"expected exactly one input tensor{f' named {input_name!r}' if input_name else ''}, "
            f"got {len(request.inputs)}"
        )
    tensor = inputs[0]
    dtype = _NUMERIC.get(tensor.datatype)
    if dtype is None:
        raise InvalidInputError(f"datatype {tensor.datatype} is not numeric")
    if any(d < 0 for d in tensor.shape):
        raise InvalidInputError(f"shape {tensor.shape} has a negative dimension")
    try:
        flat = np.asarray(tensor.data, dtype=dtype).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"input data is not a {tensor.datatype} array: {exc}") from exc
    expected = int(np.prod(tensor.shape)) if tensor.shape else 1
    if flat.size != expected:
        raise InvalidInputError(
            f"input shape {tensor.shape} needs {expected} values, data has {flat.size}"
        )
    return flat.reshape(tensor.shape)


def requested_outputs(request: InferenceRequest, output_name: str = PROBABILITIES) -> list[str]:
    """The names of the outputs to send, in order: the request's ``outputs`` (when given) or
    both, as the server does.

    Raises
    ------
    InvalidInputError
        The request asks for an output the model does not offer.
    """
    available = [output_name, LABEL]
    if not request.outputs:
        return available
    names = [r.name for r in request.outputs]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InvalidInputError(
            f"unknown output(s) {unknown}: the model offers {sorted(available)}")
    return names


def response_from_probs(
    model: str,
    version: int | None,
    probs: np.ndarray,
    labels: Sequence[str],
    *,
    path: str,
    id: str | None = None,
    output_name: str = PROBABILITIES,
    outputs: Sequence[str] | None = None,
) -> InferenceResponse:
    """A V2 response with the probabilities (named ``output_name``) and ``label`` (one
    predicted label per row), or only the ``outputs`` named (see :func:`requested_outputs`)."""
    probs = np.asarray(probs, dtype=np.float32)
    tensors = {
        output_name: InferTensor(name=output_name, shape=list(probs.shape), datatype="FP32",
                                 data=probs.reshape(-1).tolist()),
        LABEL: InferTensor(name=LABEL, shape=[len(labels)], datatype="BYTES", data=list(labels)),
    }
    return InferenceResponse(
        model_name=model,
        model_version=None if version is None else str(version),
        id=id,
        parameters={"path": path},
        outputs=[tensors[n] for n in (outputs or [output_name, LABEL])],
    )


def probs_from_response(response: InferenceResponse, n_rows: int) -> np.ndarray:
    """The ``[n_rows, C]`` probabilities of a V2 response (the ``probabilities`` output, or
    else its first floating-point output)."""
    candidates = [t for t in response.outputs if t.name == PROBABILITIES] or [
        t for t in response.outputs if t.datatype in ("FP16", "FP32", "FP64")
    ]
    if not candidates:
        raise ServerError("the server's response has no probabilities output")
    tensor = candidates[0]
    probs = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    if n_rows <= 0 or probs.size % n_rows:
        raise ServerError(f"the server returned {probs.size} probabilities for {n_rows} rows")
    return probs.reshape(n_rows, -1)


def labels_from_response(response: InferenceResponse) -> list[str] | None:
    """The server's ``label`` output, when it sent one."""
    for tensor in response.outputs:
        if tensor.name == LABEL and tensor.datatype == "BYTES":
            return [str(v) for v in tensor.data]
    return None


def error_body(message: str) -> dict[str, Any]:
    """The V2 error body ``{"error": message}``."""
    return {"error": message}
