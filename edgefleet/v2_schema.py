"""The Open Inference Protocol (V2) JSON schema: requests, responses and tensors, their
datatypes, decoding one tensor's JSON data, and the client side's requests and answers.

Requests carry tensors as ``{"name", "shape", "datatype", "data"}``, ``data`` the row-major
flattening of the tensor (nested lists of the same shape are accepted too). Decoding
(:func:`decode_tensor`) checks that the data matches its datatype — ``BOOL`` takes JSON booleans
only, the integer types integers within their range, ``FP16``/``FP32``/``FP64`` numbers (a
boolean or a string is never a number) — that it is rectangular and that its element count
matches the shape. A ``shape`` is a list of JSON integers (``true``, ``"1"`` or ``1.0`` are
refused), of at most :data:`MAX_DIMENSIONS` dimensions, none negative. ``BYTES`` is refused as a
model input. Values whose Python types are
already the datatype's (``set(map(type, data))``, in C) go straight to numpy; anything else is
validated by pydantic's core, which words the refusal: no Python loop over the elements. When
the caller knows the body holds no JSON boolean (``booleans=False``: no ``true`` or ``false``
in its text), the numbers of a float tensor are checked by the dtype numpy finds for them
(``float64`` or ``int64``: anything else — a string, ``null``, an integer beyond 64 bits, a
ragged list — takes the path above), which costs no pass over the elements of its own. Every
refusal is a :class:`TensorError` (an :class:`~edgefleet.errors.InputError`: 400 on both
endpoints), and the error body is :func:`error_body`. A refusal echoes at most
:data:`MAX_NAME` characters of anything the request sent (:func:`shown`): tensor and output
names longer than that are refused when the body is read, and only the first few of many
unknown outputs are named.

:func:`requested_outputs` names the outputs an answer carries (the request's, checked, or all)
and :func:`encode_outputs` builds them as JSON tensors. :mod:`edgefleet.v2` (the codec of raw
bodies, the plan's input, binary outputs and metadata) re-exports everything here: import from
there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
)

from edgefleet.bounds import check_line
from edgefleet.errors import InputError

LABEL_OUTPUT: Final = "label"
#: The output name of a request built without a manifest (a plan's usual output name).
PROBABILITIES: Final = "probabilities"
#: The header that gives the JSON part's length in a body with binary tensor data.
INFERENCE_HEADER: Final = "Inference-Header-Content-Length"
# Values too large for FP16/FP32 become inf, which the plan's input check refuses with its own
# message: numpy's overflow warning says nothing more (a filter costs nothing per call, unlike
# np.errstate).
warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning,
                        module=__name__)


# --- models ---------------------------------------------------------------------------------
#: The longest tensor or output name a request may carry, and the most characters of anything
#: the request sent that a refusal echoes (:func:`shown`).
MAX_NAME: Final = 256
#: The most dimensions a tensor's shape may have (numpy's own limit is 32 or 64, by version).
MAX_DIMENSIONS: Final = 32
#: The most unknown output names one refusal lists.
_SHOWN_NAMES = 5

V2DataType = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]


class InferTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(max_length=MAX_NAME)]
    shape: list[StrictInt]  # a JSON integer each: true, "1" or 1.0 are refused
    datatype: V2DataType
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None  # absent when the tensor's data is binary


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(max_length=MAX_NAME)]
    parameters: dict[str, Any] | None = None


#: The longest request ``id`` a V2 body may carry (it is echoed back in the answer).
MAX_REQUEST_ID = 256


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Annotated[str, Field(max_length=MAX_REQUEST_ID), AfterValidator(check_line)] | None = None
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


#: The exact Python types JSON parsing gives each kind of value (checked before pydantic runs).
_BOOL_TYPES = frozenset({bool})
_INT_TYPES = frozenset({int})
_NUMBER_TYPES = frozenset({int, float})


def _adapter(datatype: str) -> tuple[TypeAdapter[Any], str, frozenset[type]]:
    if datatype == "BOOL":
        return _BOOLS, "booleans (true/false)", _BOOL_TYPES
    if DTYPES[datatype].kind in "iu":
        return _INTS, "integers", _INT_TYPES
    return _NUMBERS, "numbers", _NUMBER_TYPES


def decode_tensor(tensor: InferTensor, *, booleans: bool = True) -> np.ndarray:
    """The tensor's data as an array of its shape and its datatype's dtype (module notes);
    ``booleans=False`` says the request's text holds no JSON boolean.

    Raises
    ------
    TensorError
        ``BYTES``, a negative dimension, ragged nesting, values of another kind than the
        datatype's (booleans in a number tensor, strings, floats in an integer tensor), integers
        out of the datatype's range, or an element count that does not match the shape.
    """
    dtype, shape = dtype_and_shape(tensor.datatype, tensor.shape)
    if tensor.data is None:
        raise TensorError(f"tensor {tensor.name!r} has no data (nor binary_data_size with the "
                          f"{INFERENCE_HEADER} header)")
    flat: list[Any] = tensor.data
    if flat and isinstance(flat[0], list):  # nested: flattened by numpy (a flat list as is)
        try:
            nested = np.asarray(tensor.data, dtype=object)
        except ValueError as exc:  # ragged nesting
            raise TensorError(f"data is not a regular (rectangular) array: {exc}") from None
        if nested.ndim > 1 and nested.shape != shape:
            raise TensorError(
                f"nested data has shape {list(nested.shape)}, declared {list(shape)}")
        flat = nested.ravel().tolist()
    expected = math.prod(shape)
    if not booleans and dtype.kind == "f":
        numbers = _numbers(flat)
        if numbers is not None:
            _check_count(len(numbers), expected, shape)
            return numbers.astype(dtype).reshape(shape)
    adapter, kind, types = _adapter(tensor.datatype)
    values = flat
    if not set(map(type, flat)) <= types:  # anything else: pydantic decides, and words why
        try:
            values = adapter.validate_python(flat)
        except ValidationError as exc:
            raise TensorError(_kind_error(exc, tensor.datatype, kind)) from None
    _check_count(len(values), expected, shape)
    return _to_dtype(values, dtype, tensor.datatype).reshape(shape)


def _numbers(flat: list[Any]) -> np.ndarray | None:
    """``flat`` as a flat ``float64`` or ``int64`` array when numpy finds one for it (numbers
    only, booleans aside: the caller rules those out), else ``None``."""
    try:
        numbers = np.asarray(flat)
    except (ValueError, TypeError, OverflowError):  # ragged, or nothing numpy can hold
        return None
    return numbers if numbers.ndim == 1 and numbers.dtype.kind in "fi" else None


def _check_count(count: int, expected: int, shape: tuple[int, ...]) -> None:
    if count != expected:
        raise TensorError(f"data has {count} elements; shape {list(shape)} needs {expected}")


def dtype_and_shape(datatype: str, dims: Sequence[int]) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """The datatype's dtype and the shape as a tuple.

    Raises
    ------
    TensorError
        A datatype without a dtype (``BYTES``), more than :data:`MAX_DIMENSIONS` dimensions,
        or a negative dimension.
    """
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise TensorError(f"datatype {datatype} is not supported: send numbers (e.g. FP32)")
    shape = tuple(dims)
    if len(shape) > MAX_DIMENSIONS:
        raise TensorError(f"shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS} are "
                          "accepted")
    if shape and min(shape) < 0:
        raise TensorError(f"shape {list(shape)} has a negative dimension")
    return dtype, shape


def _kind_error(exc: ValidationError, datatype: str, kind: str) -> str:
    bad = exc.errors()[0].get("input")
    if isinstance(bad, bool):
        return f"data contains booleans; {datatype} takes {kind}"
    if isinstance(bad, list):
        return "data is not a regular (rectangular) array"
    what = "non-numeric values" if not isinstance(bad, int | float) else f"{bad!r}"
    return f"data contains {what}; {datatype} takes {kind}"


def _to_dtype(values: list[Any], dtype: np.dtype[Any], datatype: str) -> np.ndarray:
    if dtype.kind not in "iu":  # too large for FP16/FP32: inf (refused by decode_input)
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


# --- outputs --------------------------------------------------------------------------------
def requested_outputs(requested: Sequence[RequestedOutput] | None, output_name: str
                      ) -> list[str]:
    """The names of the outputs to send, in order: the request's (when it names any), else the
    probabilities (``output_name``) and :data:`LABEL_OUTPUT`.

    Raises
    ------
    TensorError
        The request names an output the model does not offer (the first few are named), or
        names one twice.
    """
    available = [output_name, LABEL_OUTPUT]
    if not requested:
        return available
    names = [r.name for r in requested]
    unknown = [n for n in names if n not in available]
    if unknown:
        listed = ", ".join(map(shown, unknown[:_SHOWN_NAMES]))
        more = f" and {len(unknown) - _SHOWN_NAMES} more" if len(unknown) > _SHOWN_NAMES else ""
        raise TensorError(f"unknown output(s) [{listed}]{more}: the model offers "
                          f"{sorted(available)}")
    if len(set(names)) != len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise TensorError(f"output {shown(twice)} is requested more than once")
    return names


def predicted_labels(probs: np.ndarray, class_labels: Sequence[str]) -> list[str]:
    """The most probable class label of each row of ``probs``."""
    best = probs.argmax(axis=1)
    if len(best) == 1:
        return [class_labels[int(best[0])]]
    return np.asarray(class_labels, dtype=object)[best].tolist()


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


# --- refusals ---------------------------------------------------------------------------
def invalid_request(exc: ValidationError) -> TensorError:
    """The refusal of a body that is not an :class:`InferenceRequest`: where and what, for the
    first few problems, without echoing the body back."""
    parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
             for e in exc.errors(include_url=False, include_input=False)[:5]]
    return TensorError("invalid request: " + "; ".join(parts))


def shown(text: str) -> str:
    """``text`` quoted (``repr``) for a refusal, cut to its first :data:`MAX_NAME` characters."""
    if len(text) <= MAX_NAME:
        return repr(text)
    return f"{text[:MAX_NAME]!r}... ({len(text)} characters)"


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
        if tensor.name == LABEL_OUTPUT and tensor.datatype == "BYTES" and tensor.data is not None:
            return [str(v) for v in tensor.data]
    return None
