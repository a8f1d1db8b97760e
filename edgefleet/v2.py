"""The Open Inference Protocol (V2): the one codec of the server and the edge agent.

The server's ``/v2/models/{m}[/versions/{v}]/infer`` and the agent's local endpoint decode,
check and answer requests with the functions below, so both accept and refuse the same bodies
with the same messages; the agent's fallback client encodes its requests and reads the server's
answers with them too.

The JSON schema, the datatypes and the decoding of one tensor's JSON data live in
:mod:`edgefleet.v2_schema` and are re-exported here (:class:`InferenceRequest`,
:func:`decode_tensor`, :class:`TensorError`, the client side...).

A plan takes one ``float32 [n, *sample_shape]`` input (:func:`decode_input`): the request's one
tensor named as the manifest's input, of shape ``[n, *sample_shape]`` with
``1 <= n <= max_batch``, any datatype above but ``BYTES`` (``BOOL`` as 0/1), cast to float32, every
value finite. A response (:func:`encode_outputs`) carries the class probabilities
(``FP32 [n, n_classes]``, named as the manifest's output) and the most probable class label
(``BYTES [n]``, named :data:`LABEL_OUTPUT`), or only the outputs the request names
(:func:`requested_outputs`, checked before anything runs). Every refusal is a
:class:`TensorError` (an :class:`~edgefleet.errors.InputError`: 400 on both endpoints), and the
error body is :func:`error_body`.

The binary tensor data extension (``binary_tensor_data`` in :func:`server_metadata`) is spoken
both ways. :func:`decode_request` takes the raw body and the request headers: without an
``Inference-Header-Content-Length`` header the whole body is the JSON request (whatever its
``Content-Type``, or none); with one, that many leading bytes are the JSON and the rest is the
data of the inputs that carry ``parameters.binary_data_size`` (and no ``data``), concatenated in
input order, little-endian and row-major, read with ``numpy.frombuffer``. :func:`encode_response`
returns the body and its headers: outputs the request asks for as binary (the output's
``parameters.binary_data``, else the request's ``parameters.binary_data_output``) carry
``parameters.binary_data_size`` and their bytes follow the JSON, announced by the
``Inference-Header-Content-Length`` response header; ``BYTES`` elements are each prefixed with
their length as a 4-byte little-endian unsigned integer.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import pydantic_core
from pydantic import ValidationError

from edgefleet import __version__
from edgefleet.plan import PlanManifest
from edgefleet.runtime import all_finite
from edgefleet.v2_schema import (
    DTYPES,
    INFERENCE_HEADER,
    LABEL_OUTPUT,
    MAX_DIMENSIONS,
    MAX_NAME,
    PROBABILITIES,
    InferenceRequest,
    InferenceResponse,
    InferTensor,
    RequestedOutput,
    TensorError,
    V2DataType,
    V2Error,
    decode_tensor,
    dtype_and_shape,
    encode_outputs,
    error_body,
    invalid_request,
    labels_from_response,
    predicted_labels,
    probs_from_response,
    request_from_array,
    requested_outputs,
    shown,
)

__all__ = [
    "BINARY_EXTENSION",
    "DTYPES",
    "INFERENCE_HEADER",
    "LABEL_OUTPUT",
    "MAX_DIMENSIONS",
    "MAX_NAME",
    "PROBABILITIES",
    "DecodedRequest",
    "InferTensor",
    "InferenceRequest",
    "InferenceResponse",
    "RequestedOutput",
    "Tensor",
    "TensorError",
    "V2DataType",
    "V2Error",
    "check_batch",
    "decode_input",
    "decode_request",
    "decode_tensor",
    "encode_outputs",
    "encode_prediction",
    "encode_response",
    "error_body",
    "invalid_request",
    "labels_from_response",
    "model_metadata",
    "predicted_labels",
    "probs_from_response",
    "request_from_array",
    "requested_outputs",
    "server_metadata",
    "shown",
]

PLATFORM: Final = "tflite"
_LITTLE = sys.byteorder == "little"  # the extension's byte order is the machine's
BINARY_EXTENSION: Final = "binary_tensor_data"
#: An ``Inference-Header-Content-Length`` value: ASCII digits only (``str.isdigit`` would take
#: ``²``, which ``int`` refuses).
_LENGTH = re.compile(r"[0-9]{1,15}")
#: The JSON part's size from which its text is searched for booleans, so that its float
#: tensors skip the pass over their elements' types (:func:`decode_tensor`, ``booleans``):
#: below it the search and numpy's own type discovery cost more than that pass.
_SCAN_FROM = 2048


# --- the plan's input -----------------------------------------------------------------------
def decode_input(inputs: Sequence[Tensor | InferTensor], manifest: PlanManifest, *,
                 max_batch: int) -> np.ndarray:
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
        raise TensorError(f"unknown input {shown(tensor.name)}: the model's input is "
                          f"{spec.name!r}")
    if tensor.datatype not in DTYPES:
        raise TensorError(f"datatype {tensor.datatype} is not supported: send numbers (e.g. FP32)")
    sample = tuple(spec.sample_shape)
    shape = tuple(tensor.shape)
    if len(shape) != 1 + len(sample) or shape[1:] != sample:
        raise TensorError(f"shape {list(shape)} does not fit the model: "
                          f"expected [n, {', '.join(map(str, sample))}]")
    check_batch(shape[0], max_batch)
    data = tensor.array if isinstance(tensor, Tensor) else decode_tensor(tensor)
    out = data.astype(np.float32, copy=False)  # FP64 beyond FP32: inf, refused below
    if not all_finite(out):
        raise TensorError("data contains NaN or infinite values (or values too large for FP32)")
    return out


def check_batch(rows: int, max_batch: int) -> None:
    """Refuse a batch outside ``1..max_batch`` rows."""
    if not 1 <= rows <= max_batch:
        raise TensorError(f"batch size {rows} is outside 1..{max_batch}")


# --- raw bodies: JSON and the binary tensor data extension -----------------------------------
# Not frozen: a frozen dataclass sets each field through ``object.__setattr__``, which costs
# a tiny model's request more than its decoding; nothing here changes them once made.
@dataclass(slots=True)
class Tensor:
    """A decoded tensor: ``array`` has the datatype's dtype (``DTYPES``; for ``BYTES`` outputs,
    strings) and the shape ``shape``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DecodedRequest:
    """A request read by :func:`decode_request`: its inputs decoded, its outputs as asked."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def binary_output(self, name: str) -> bool:
        """Whether output ``name`` is sent as binary data: the output's ``binary_data``, else
        the request's ``binary_data_output``, else no."""
        for out in self.outputs or ():
            if out.name == name and out.parameters and "binary_data" in out.parameters:
                return bool(out.parameters["binary_data"])
        return bool(self.parameters.get("binary_data_output", False))


class Headers(Protocol):
    """Request headers: a mapping, Starlette's ``Headers``, ``http.server``'s message..."""

    def get(self, name: str, /) -> str | None: ...


def _header(headers: Headers | Mapping[str, str] | None, name: str) -> str | None:
    """A header of a case-insensitive mapping, or of a dict keyed by lower-case names."""
    if not headers:
        return None
    value = headers.get(name)
    return headers.get(name.lower()) if value is None and isinstance(headers, dict) else value


def _flag(parameters: dict[str, Any] | None, key: str, where: str) -> None:
    if parameters and key in parameters and not isinstance(parameters[key], bool):
        raise TensorError(f"{where} parameter {key} must be true or false")


def decode_request(body: bytes, headers: Headers | Mapping[str, str] | None = None
                   ) -> DecodedRequest:
    """Read a request body (JSON, or JSON and binary tensor data; see the module notes).

    ``headers`` is looked up for ``Inference-Header-Content-Length`` and ``Content-Encoding``
    only; ``Content-Type`` does not matter.

    Raises
    ------
    TensorError
        A compressed body, a bad length header (anything but ASCII digits, or beyond the body),
        a body that is no request (named as the header's JSON part when the header is there),
        binary sizes that do not add up to the binary part, or an input that
        :func:`decode_tensor` refuses.
    """
    encoding = _header(headers, "Content-Encoding")
    if encoding and encoding.strip().lower() != "identity":
        raise TensorError(f"Content-Encoding {encoding[:20]!r} is not supported: send the body "
                          "uncompressed")
    length = _header(headers, INFERENCE_HEADER)
    binary: memoryview | None = None
    head = body
    if length is not None:
        digits = length.strip()
        if not _LENGTH.fullmatch(digits) or int(digits) > len(body):
            raise TensorError(f"{INFERENCE_HEADER} {length[:20]!r} is not a length within the "
                              f"body's {len(body)} bytes")
        head, binary = body[: int(digits)], memoryview(body)[int(digits):]
    try:
        request = InferenceRequest.model_validate_json(head)
    except ValidationError as exc:
        raise _refusal(exc, length) from None
    _flag(request.parameters, "binary_data_output", "request")
    for out in request.outputs or ():
        _flag(out.parameters, "binary_data", f"output {out.name!r}")
        if out.parameters and "classification" in out.parameters:
            raise TensorError("the classification extension is not supported: ask for "
                              f"{LABEL_OUTPUT!r} for the most probable class")
    # JSON's only booleans; a small body's tensors are checked element by element regardless
    booleans = len(head) < _SCAN_FROM or b"true" in head or b"false" in head
    return DecodedRequest(id=request.id, inputs=_decode_inputs(request.inputs, binary, booleans),
                          outputs=request.outputs, parameters=request.parameters or {})


def _refusal(exc: ValidationError, length: str | None) -> TensorError:
    """The refusal of a JSON part that is no request; a JSON syntax error names the length
    header when there is one (the JSON part ends where it says)."""
    refusal = invalid_request(exc)
    syntax = exc.errors()[0]["type"] == "json_invalid"
    if length is None and syntax and "trailing characters" in str(refusal):
        return TensorError(f"{refusal} (binary tensor data needs the {INFERENCE_HEADER} header)")
    if length is not None and syntax:
        return TensorError(f"{refusal} (the JSON part: the body's first {length.strip()} bytes, "
                           f"as {INFERENCE_HEADER} says)")
    return refusal


def _decode_inputs(tensors: Sequence[InferTensor], binary: memoryview | None,
                   booleans: bool = True) -> list[Tensor]:
    """The request's tensors decoded (``booleans``: whether its JSON text may hold a boolean,
    see :func:`decode_tensor`)."""
    offset = 0
    out = []
    for t in tensors:
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            array = decode_tensor(t, booleans=booleans)
        else:
            if binary is None:
                raise TensorError(f"input {t.name!r} has binary_data_size but the request has "
                                  f"no {INFERENCE_HEADER} header")
            if t.data is not None:
                raise TensorError(f"input {t.name!r} has both data and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise TensorError(f"input {t.name!r}: binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise TensorError(f"input {t.name!r}: binary_data_size {size} exceeds the "
                                  f"{len(binary) - offset} bytes of binary data left")
            array = _from_binary(t, binary[offset : offset + size])
            offset += size
        out.append(Tensor(t.name, t.datatype, tuple(t.shape), array, t.parameters or {}))
    if binary is not None and offset != len(binary):
        raise TensorError(f"the body has {len(binary) - offset} bytes of binary data that no "
                          "input's binary_data_size accounts for")
    return out


def _from_binary(tensor: InferTensor, data: memoryview) -> np.ndarray:
    dtype, shape = dtype_and_shape(tensor.datatype, tensor.shape)
    count = math.prod(shape)
    if count * dtype.itemsize != len(data):
        raise TensorError(f"input {tensor.name!r}: {len(data)} bytes of binary data, but "
                          f"{tensor.datatype} {list(shape)} takes {count * dtype.itemsize}")
    array = np.frombuffer(data, dtype=dtype if _LITTLE else dtype.newbyteorder("<"))
    if not _LITTLE:
        array = array.astype(dtype)  # native byte order (and numpy's own dtype object)
    if tensor.datatype == "BOOL" and array.size and int(array.view(np.uint8).max()) > 1:
        raise TensorError(f"input {tensor.name!r}: BOOL binary data takes bytes 0 and 1 only")
    return array.reshape(shape)


def encode_response(request: DecodedRequest | None, *, model_name: str,
                    model_version: str | None = None, outputs: Sequence[Tensor],
                    parameters: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    """A response's body and headers (``Content-Type``, and ``Inference-Header-Content-Length``
    when an output is binary): the request's ``id``, the outputs in JSON or binary as it asks."""
    return _encode(request, model_name, model_version,
                   [(t.name, t.datatype, t.shape, t.array) for t in outputs], parameters)


def _encode(request: DecodedRequest | None, model_name: str, model_version: str | None,
            outputs: Sequence[tuple[str, str, Sequence[int], Any]],
            parameters: dict[str, Any] | None) -> tuple[bytes, dict[str, str]]:
    """:func:`encode_response` of outputs given as ``(name, datatype, shape, array)``."""
    blobs: list[bytes] = []
    tensors = []
    for name, datatype, shape, values in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(shape)}
        if request is not None and request.binary_output(name):
            raw = _bytes_binary(values) if datatype == "BYTES" else np.ascontiguousarray(
                values, dtype=DTYPES[datatype].newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif type(values) is list and datatype == "BYTES":  # strings, as JSON takes them
            entry["data"] = values
        else:
            array = np.asarray(values)
            if array.dtype.kind == "S":
                array = np.char.decode(array, "utf-8")
            entry["data"] = array.ravel().tolist()
        tensors.append(entry)
    head: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        head["model_version"] = model_version
    if request is not None and request.id is not None:
        head["id"] = request.id
    if parameters:
        head["parameters"] = parameters
    head["outputs"] = tensors
    text = pydantic_core.to_json(head)
    if not blobs:
        return text, {"Content-Type": "application/json"}
    return b"".join([text, *blobs]), {"Content-Type": "application/octet-stream",
                                      INFERENCE_HEADER: str(len(text))}


def _bytes_binary(values: Any) -> bytes:
    """``BYTES`` elements, each prefixed with its 4-byte little-endian length (vectorised:
    a fixed-width array and a mask of the bytes each element really has; trailing NUL bytes of
    an element are not kept, a limit of numpy's fixed-width strings)."""
    array = np.asarray(values).ravel()
    n = array.size
    if n == 0:
        return b""
    if array.dtype.kind == "S":
        encoded = array
    else:
        text = array if array.dtype.kind == "U" else array.astype(str)
        try:
            encoded = text.astype(np.bytes_)  # ASCII, in C
        except UnicodeEncodeError:
            encoded = np.char.encode(text, "utf-8")
    if n == 1:  # one element (a single-sample answer's label)
        item: bytes = encoded.item()
        return len(item).to_bytes(4, "little") + item
    width = encoded.dtype.itemsize
    lengths = np.char.str_len(encoded).astype("<u4")
    table = np.empty((n, 4 + width), dtype=np.uint8)
    table[:, :4] = lengths.view(np.uint8).reshape(n, 4)
    table[:, 4:] = encoded.view(np.uint8).reshape(n, width)
    keep = np.ones(table.shape, dtype=bool)
    keep[:, 4:] = np.arange(width) < lengths[:, None]
    return table[keep].tobytes()


def encode_prediction(request: DecodedRequest | None, probs: np.ndarray, labels: Sequence[str],
                      *, output_name: str, names: Sequence[str], model_name: str,
                      model_version: str | None = None, parameters: dict[str, Any] | None = None
                      ) -> tuple[bytes, dict[str, str]]:
    """:func:`encode_response` of a plan's answer: the outputs ``names`` (see
    :func:`requested_outputs`), the probabilities ``FP32 [n, C]`` named ``output_name`` and the
    ``labels`` ``BYTES [n]`` named :data:`LABEL_OUTPUT`."""
    probs = np.asarray(probs, dtype=np.float32)
    available = {  # (name, datatype, shape, values): no Tensor made per answer
        output_name: (output_name, "FP32", probs.shape, probs),
        LABEL_OUTPUT: (LABEL_OUTPUT, "BYTES", (len(labels),), list(labels)),
    }
    return _encode(request, model_name, model_version, [available[n] for n in names],
                   parameters)


# --- metadata -------------------------------------------------------------------------------
def server_metadata() -> dict[str, Any]:
    """``GET /v2``: the server's (or agent's) name, version and protocol extensions."""
    return {"name": "edgefleet", "version": __version__, "extensions": [BINARY_EXTENSION]}


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


