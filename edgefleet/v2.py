"""The Open Inference Protocol (V2) in JSON: the one codec of the server and the edge agent.

The server's ``/v2/models/{m}[/versions/{v}]/infer`` and the agent's local endpoint decode,
check and answer requests with the functions below, so both accept and refuse the same bodies
with the same messages; the agent's fallback client encodes its requests and reads the server's
answers with them too.

Requests carry tensors as ``{"name", "shape", "datatype", "data"}``, ``data`` the row-major
flattening of the tensor (nested lists of the same shape are accepted too). Decoding
(:func:`decode_tensor`) checks that the data matches its datatype — ``BOOL`` takes JSON booleans
only, the integer types integers within their range, ``FP16``/``FP32``/``FP64`` numbers (a
boolean or a string is never a number) — that it is rectangular and that its element count
matches the shape. ``BYTES`` is refused as a model input. The values are validated by pydantic's
core and converted by numpy: no Python loop over the elements.

A plan takes one ``float32 [n, *sample_shape]`` input (:func:`decode_input`): the request's one
tensor named as the manifest's input, of shape ``[n, *sample_shape]`` with
``1 <= n <= max_batch``, any datatype above but ``BYTES`` (``BOOL`` as 0/1), cast to float32, every
value finite. A response (:func:`encode_outputs`) carries the class probabilities
(``FP32 [n, n_classes]``, named as the manifest's output) and the most probable class label
(``BYTES [n]``, named :data:`LABEL_OUTPUT`), or only the outputs the request names
(:func:`requested_outputs`, checked before anything runs). Every refusal is a
:class:`TensorError` (an :class:`~edgefleet.errors.InputError`: 400 on both endpoints), and the
error body is :func:`error_body`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Final, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
)

from edgefleet import __version__
from edgefleet.errors import InputError
from edgefleet.plan import PlanManifest

__all__ = [
    "DTYPES",
    "LABEL_OUTPUT",
    "PROBABILITIES",
    "InferTensor",
    "InferenceRequest",
    "InferenceResponse",
    "RequestedOutput",
    "TensorError",
    "V2DataType",
    "V2Error",
    "check_batch",
    "decode_input",
    "decode_tensor",
    "encode_outputs",
    "error_body",
    "invalid_request",
    "labels_from_response",
    "model_metadata",
    "predicted_labels",
    "probs_from_response",
    "request_from_array",
    "requested_outputs",
    "server_metadata",
]

LABEL_OUTPUT: Final = "label"
#: The output name of a request built without a manifest (a plan's usual output name).
PROBABILITIES: Final = "probabilities"
PLATFORM: Final = "tflite"


# --- models ---------------------------------------------------------------------------------
V2DataType = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]


class InferTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: V2DataType
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor]
    outputs: list[RequestedOutput] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferTensor]


class V2Error(BaseModel):
    error: str


class TensorError(InputError):
    """A V2 tensor (or request) that cannot be decoded or does not fit the model."""


# --- datatypes ------------------------------------------------------------------------------
#: The numpy dtype of every numeric V2 datatype (``BYTES`` has none).
DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_BOOLS = TypeAdapter(list[StrictBool])
_INTS = TypeAdapter(list[StrictInt])
_NUMBERS = TypeAdapter(list[StrictInt | StrictFloat])


def _adapter(datatype: str) -> tuple[TypeAdapter[Any], str]:
    if datatype == "BOOL":
        return _BOOLS, "booleans (true/false)"
    if DTYPES[datatype].kind in "iu":
        return _INTS, "integers"
    return _NUMBERS, "numbers"


def decode_tensor(tensor: InferTensor) -> np.ndarray:
    """The tensor's data as an array of its shape and its datatype's dtype (module notes).

    Raises
    ------
    TensorError
        ``BYTES``, a negative dimension, ragged nesting, values of another kind than the
        datatype's (booleans in a number tensor, strings, floats in an integer tensor), integers
        out of the datatype's range, or an element count that does not match the shape.
    """
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise TensorError(f"datatype {tensor.datatype} is not supported: send numbers (e.g. FP32)")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"shape {list(shape)} has a negative dimension")
    try:
        nested = np.asarray(tensor.data, dtype=object)
    except ValueError as exc:  # ragged nesting
        raise TensorError(f"data is not a regular (rectangular) array: {exc}") from None
    if nested.ndim > 1 and nested.shape != shape:
        raise TensorError(f"nested data has shape {list(nested.shape)}, declared {list(shape)}")
    adapter, kind = _adapter(tensor.datatype)
    try:
        values = adapter.validate_python(nested.ravel().tolist())
    except ValidationError as exc:
        raise TensorError(_kind_error(exc, tensor.datatype, kind)) from None
    expected = int(np.prod(shape)) if shape else 1
    if len(values) != expected:
        raise TensorError(f"data has {len(values)} elements; shape {list(shape)} needs {expected}")
    return _to_dtype(values, dtype, tensor.datatype).reshape(shape)


def _kind_error(exc: ValidationError, datatype: str, kind: str) -> str:
    bad = exc.errors()[0].get("input")
    if isinstance(bad, bool):
        return f"data contains booleans; {datatype} takes {kind}"
    if isinstance(bad, list):
        return "data is not a regular (rectangular) array"
    what = "non-numeric values" if not isinstance(bad, int | float) else f"{bad!r}"
    return f"data contains {what}; {datatype} takes {kind}"


def _to_dtype(values: list[Any], dtype: np.dtype[Any], datatype: str) -> np.ndarray:
    if dtype.kind not in "iu":
        with np.errstate(over="ignore"):  # too large for FP16/FP32: inf, refused by the caller
            return np.asarray(values, dtype=dtype)
    info = np.iinfo(dtype)
    try:
        wide = np.asarray(values, dtype=np.int64)
    except OverflowError:  # beyond int64: uint64 holds it unless it also has negatives
        try:
            with warnings.catch_warnings():  # numpy < 2 wraps negatives with a warning
                warnings.simplefilter("error", DeprecationWarning)
                wide = np.asarray(values, dtype=np.uint64)
        except (OverflowError, DeprecationWarning):
            raise TensorError(f"data has integers outside the range of {datatype}") from None
    if wide.size and (int(wide.min()) < info.min or int(wide.max()) > info.max):
        raise TensorError(f"data has integers outside the range of {datatype}")
    return wide.astype(dtype)


def decode_input(inputs: Sequence[InferTensor], manifest: PlanManifest, *, max_batch: int
                 ) -> np.ndarray:
    """The plan's ``float32 [n, *sample_shape]`` input from the request's tensors (module notes).

    Raises
    ------
    TensorError
        Not exactly one tensor, another name than the manifest's input, a shape that does not
        fit, a batch outside ``1..max_batch``, undecodable data or non-finite values.
    """
    spec = manifest.input
    if len(inputs) != 1:
        raise TensorError(
            f"the model takes exactly one input tensor ({spec.name!r}), got {len(inputs)}")
    tensor = inputs[0]
    if tensor.name != spec.name:
        raise TensorError(f"unknown input {tensor.name!r}: the model's input is {spec.name!r}")
    if tensor.datatype not in DTYPES:
        raise TensorError(f"datatype {tensor.datatype} is not supported: send numbers (e.g. FP32)")
    sample = tuple(spec.sample_shape)
    shape = tuple(tensor.shape)
    if len(shape) != 1 + len(sample) or shape[1:] != sample:
        raise TensorError(f"shape {list(shape)} does not fit the model: "
                          f"expected [n, {', '.join(map(str, sample))}]")
    check_batch(shape[0], max_batch)
    out = decode_tensor(tensor).astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        raise TensorError("data contains NaN or infinite values (or values too large for FP32)")
    return out


def check_batch(rows: int, max_batch: int) -> None:
    """Refuse a batch outside ``1..max_batch`` rows."""
    if not 1 <= rows <= max_batch:
        raise TensorError(f"batch size {rows} is outside 1..{max_batch}")


# --- outputs --------------------------------------------------------------------------------
def requested_outputs(requested: Sequence[RequestedOutput] | None, output_name: str
                      ) -> list[str]:
    """The names of the outputs to send, in order: the request's (when it names any), else the
    probabilities (``output_name``) and :data:`LABEL_OUTPUT`.

    Raises
    ------
    TensorError
        The request names an output the model does not offer.
    """
    available = [output_name, LABEL_OUTPUT]
    if not requested:
        return available
    names = [r.name for r in requested]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise TensorError(f"unknown output(s) {unknown}: the model offers {sorted(available)}")
    return names


def predicted_labels(probs: np.ndarray, class_labels: Sequence[str]) -> list[str]:
    """The most probable class label of each row of ``probs``."""
    return np.asarray(class_labels, dtype=object)[np.argmax(probs, axis=1)].tolist()


def encode_outputs(probs: np.ndarray, labels: Sequence[str], output_name: str,
                   names: Sequence[str]) -> list[InferTensor]:
    """The response tensors ``names`` (see :func:`requested_outputs`): the probabilities as
    ``FP32 [n, n_classes]`` named ``output_name``, the ``labels`` as ``BYTES [n]``."""
    probs = np.asarray(probs, dtype=np.float32)
    tensors = {
        output_name: InferTensor(name=output_name, shape=list(probs.shape), datatype="FP32",
                                 data=probs.ravel().tolist()),
        LABEL_OUTPUT: InferTensor(name=LABEL_OUTPUT, shape=[len(labels)], datatype="BYTES",
                                  data=list(labels)),
    }
    return [tensors[n] for n in names]


# --- metadata -------------------------------------------------------------------------------
def server_metadata() -> dict[str, Any]:
    """``GET /v2``: the server's (or agent's) name, version and protocol extensions."""
    return {"name": "edgefleet", "version": __version__, "extensions": []}


def model_metadata(name: str, versions: Sequence[int], manifest: PlanManifest,
                   **parameters: Any) -> dict[str, Any]:
    """``GET /v2/models/{name}``: inputs and outputs (``-1`` marks the batch dimension), the
    ``versions`` served, and in ``parameters`` the feature names, class labels and ``parameters``
    given (the version answering, its alias...)."""
    spec = manifest.input
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [{"name": spec.name, "datatype": "FP32", "shape": [-1, *spec.sample_shape]}],
        "outputs": [
            {"name": manifest.output.name, "datatype": "FP32",
             "shape": [-1, manifest.output.n_classes]},
            {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {**parameters, "feature_names": list(spec.feature_names),
                       "class_labels": list(manifest.output.class_labels)},
    }


def invalid_request(exc: ValidationError) -> TensorError:
    """The refusal of a body that is not an :class:`InferenceRequest`: where and what, for the
    first few problems, without echoing the body back."""
    parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
             for e in exc.errors(include_url=False, include_input=False)[:5]]
    return TensorError("invalid request: " + "; ".join(parts))


def error_body(message: str) -> dict[str, Any]:
    """The V2 error body ``{"error": message}``."""
    return V2Error(error=message).model_dump()


# --- the client side --------------------------------------------------------------------------
def request_from_array(x: np.ndarray, input_name: str = "x", *, id: str | None = None
                       ) -> InferenceRequest:
    """An ``FP32`` request for features ``x`` (any numeric dtype, cast to float32)."""
    arr = np.asarray(x, dtype=np.float32)
    return InferenceRequest(id=id, inputs=[InferTensor(
        name=input_name, shape=list(arr.shape), datatype="FP32", data=arr.ravel().tolist())])


def probs_from_response(response: InferenceResponse, n_rows: int) -> np.ndarray:
    """The ``float32 [n_rows, C]`` probabilities of a response (its :data:`PROBABILITIES`
    output, or else its first floating-point one).

    Raises
    ------
    TensorError
        No such output, or not ``n_rows`` rows of numbers.
    """
    candidates = [t for t in response.outputs if t.name == PROBABILITIES] or [
        t for t in response.outputs if t.datatype in ("FP16", "FP32", "FP64")]
    if not candidates:
        raise TensorError("the response has no probabilities output")
    probs = decode_tensor(candidates[0]).astype(np.float32).reshape(-1)
    if n_rows <= 0 or probs.size % n_rows:
        raise TensorError(f"the response has {probs.size} probabilities for {n_rows} rows")
    return probs.reshape(n_rows, -1)


def labels_from_response(response: InferenceResponse) -> list[str] | None:
    """The response's :data:`LABEL_OUTPUT` output, when it has one."""
    for tensor in response.outputs:
        if tensor.name == LABEL_OUTPUT and tensor.datatype == "BYTES":
            return [str(v) for v in tensor.data]
    return None
