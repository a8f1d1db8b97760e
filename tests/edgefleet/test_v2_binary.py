"""The V2 codec on raw bodies (:func:`edgefleet.v2.decode_request`, :func:`~edgefleet.v2.
encode_response`): JSON without a ``Content-Type``, and the binary tensor data extension both
ways, with every malformed framing refused as a :class:`~edgefleet.v2.TensorError` (a 400)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from edgefleet import v2
from edgefleet.errors import InputError

HEADER = v2.INFERENCE_HEADER


def binary_body(arrays: dict[str, tuple[str, np.ndarray]], **request: Any
                ) -> tuple[bytes, dict[str, str]]:
    """A request whose inputs are all binary: (body, headers), as tritonclient frames it."""
    inputs = [{"name": name, "shape": list(a.shape), "datatype": datatype,
               "parameters": {"binary_data_size": a.nbytes}}
              for name, (datatype, a) in arrays.items()]
    head = json.dumps({"inputs": inputs, **request}).encode()
    blob = b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for _, a in arrays.values())
    return head + blob, {HEADER: str(len(head))}


def split_response(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON part of a response and each binary output's value, read independently of the
    codec (BYTES: 4-byte little-endian length, then the bytes)."""
    if HEADER not in headers:
        return json.loads(body), {}
    n = int(headers[HEADER])
    head, rest = json.loads(body[:n]), body[n:]
    values: dict[str, Any] = {}
    for out in head["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            continue
        raw, rest = rest[:size], rest[size:]
        if out["datatype"] == "BYTES":
            items = []
            while raw:
                (k,) = struct.unpack("<I", raw[:4])
                items.append(raw[4:4 + k].decode())
                raw = raw[4 + k:]
            values[out["name"]] = items
        else:
            values[out["name"]] = np.frombuffer(raw, dtype="<f4").reshape(out["shape"])
    assert rest == b""
    return head, values


# --- decoding ---------------------------------------------------------------------------------
def test_json_without_any_content_type_decodes() -> None:
    body = json.dumps({"id": "r1", "inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).encode()
    for headers in (None, {}, {"Content-Type": "text/plain"}):
        req = v2.decode_request(body, headers)
        assert req.id == "r1" and req.inputs[0].array.tolist() == [[1.0, 2.0, 3.0]]
        assert req.inputs[0].array.dtype == np.float32 and not req.binary_output("probabilities")


@pytest.mark.parametrize(("datatype", "values"), [
    ("FP32", np.arange(6, dtype=np.float32)), ("FP16", np.arange(6, dtype=np.float16)),
    ("FP64", np.linspace(-1, 1, 6)), ("INT8", np.arange(-3, 3, dtype=np.int8)),
    ("UINT64", np.asarray([0, 1, 2, 3, 4, 2**64 - 1], dtype=np.uint64)),
    ("BOOL", np.asarray([True, False] * 3)),
])
def test_binary_inputs_decode_to_their_dtype_and_shape(datatype: str, values: np.ndarray) -> None:
    a = values.reshape(2, 3)
    body, headers = binary_body({"x": (datatype, a)})
    got = v2.decode_request(body, headers).inputs[0]
    assert got.array.dtype == v2.DTYPES[datatype] and got.array.shape == (2, 3)
    assert np.array_equal(got.array, a)


def test_binary_and_json_inputs_mix_in_input_order() -> None:
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    b = np.asarray([[7, 8]], dtype=np.int32)
    head = json.dumps({"inputs": [
        {"name": "a", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
        {"name": "j", "shape": [1], "datatype": "INT64", "data": [5]},
        {"name": "b", "shape": [1, 2], "datatype": "INT32", "parameters": {"binary_data_size": 8}},
    ]}).encode()
    req = v2.decode_request(head + a.tobytes() + b.tobytes(), {HEADER.lower(): str(len(head))})
    assert [t.name for t in req.inputs] == ["a", "j", "b"]
    assert np.array_equal(req.inputs[0].array, a) and req.inputs[1].array.tolist() == [5]
    assert np.array_equal(req.inputs[2].array, b)


def _framed(inputs: list[dict[str, Any]], blob: bytes, header: str | None = "auto"
            ) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": inputs}).encode()
    headers = {} if header is None else {HEADER: str(len(head)) if header == "auto" else header}
    return head + blob, headers


X = {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
EIGHT = np.ones(2, dtype=np.float32).tobytes()


@pytest.mark.parametrize(("body", "message"), [
    (_framed([X], EIGHT[:4]), "exceeds the 4 bytes"),
    (_framed([X], EIGHT + b"\0"), "1 bytes of binary data that no input"),
    (_framed([X], b"", header=None), f"no {HEADER} header"),
    (_framed([X], EIGHT, header=None), f"trailing characters.*needs the {HEADER} header"),
    (_framed([X], EIGHT, header="9999"), "not a length within"),
    (_framed([X], EIGHT, header="-3"), "not a length within"),
    (_framed([X], EIGHT, header="ten"), "not a length within"),
    (_framed([X], EIGHT, header="\xb2"), f"{HEADER} '\xb2' is not a length within"),  # '²'
    (_framed([X], EIGHT, header="\u0661"), "not a length within"),  # an Arabic-Indic 1
    (_framed([X], EIGHT, header="1" * 16), "not a length within"),
    (_framed([X, {**X, "name": "y", "shape": [1] * 65}], EIGHT * 2),
     "shape has 65 dimensions; at most 32"),
    (_framed([{**X, "parameters": {"binary_data_size": 4}}], EIGHT[:4]),
     "4 bytes of binary data, but FP32 \\[1, 2\\] takes 8"),
    (_framed([{**X, "parameters": {"binary_data_size": "8"}}], EIGHT), "must be a byte count"),
    (_framed([{**X, "parameters": {"binary_data_size": True}}], EIGHT), "must be a byte count"),
    (_framed([{**X, "data": [1, 2]}], EIGHT), "both data and binary_data_size"),
    (_framed([{**X, "datatype": "BYTES"}], EIGHT), "BYTES is not supported"),
    (_framed([{**X, "datatype": "BOOL", "parameters": {"binary_data_size": 2}}], b"\x01\x02"),
     "bytes 0 and 1 only"),
    (_framed([{**X, "shape": [-1, 2]}], EIGHT), "negative dimension"),
    (_framed([{"name": "x", "shape": [1, 2], "datatype": "FP32"}], b"", header=None),
     "has no data"),
    ((b'{"inputs": [', {}), "invalid request: "),
    ((b"", {}), "invalid request: "),
    ((b'{"inputs": []}', {"Content-Encoding": "gzip"}), "Content-Encoding 'gzip'"),
])
def test_malformed_framing_is_refused_with_a_clear_message(
        body: tuple[bytes, dict[str, str]], message: str) -> None:
    with pytest.raises(v2.TensorError, match=message) as info:
        v2.decode_request(*body)
    assert isinstance(info.value, InputError)  # a 400 on both endpoints


@pytest.mark.parametrize("delta", [-5, 3])
def test_a_length_header_that_misses_the_json_is_named_in_the_refusal(delta: int) -> None:
    """A header shorter than the JSON cuts it short, a longer one takes binary data in."""
    body, headers = _framed([X], EIGHT)
    n = int(headers[HEADER]) + delta
    with pytest.raises(v2.TensorError, match=f"Invalid JSON.*the body's first {n} bytes, as "
                       f"{HEADER} says"):
        v2.decode_request(body, {HEADER: str(n)})


@pytest.mark.parametrize(("request_fields", "message"), [
    ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output must be true or false"),
    ({"outputs": [{"name": "label", "parameters": {"binary_data": 1}}]}, "must be true or false"),
    ({"outputs": [{"name": "label", "parameters": {"classification": 3}}]}, "classification"),
])
def test_output_parameters_are_checked(request_fields: dict[str, Any], message: str) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                       **request_fields}).encode()
    with pytest.raises(v2.TensorError, match=message):
        v2.decode_request(body)


# --- encoding ---------------------------------------------------------------------------------
PROBS = np.asarray([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
LABELS = ["cat", "é-ü"]  # multi-byte UTF-8 counts in bytes


def _encode(request: v2.DecodedRequest | None, names: list[str] | None = None
            ) -> tuple[bytes, dict[str, str]]:
    return v2.encode_prediction(request, PROBS, LABELS, output_name="probabilities",
                                names=names or ["probabilities", "label"], model_name="m",
                                model_version="3", parameters={"path": "local"})


def _request(**fields: Any) -> v2.DecodedRequest:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                       **fields}).encode()
    return v2.decode_request(body)


def test_json_responses_carry_the_request_id_and_no_length_header() -> None:
    body, headers = _encode(_request(id="abc"))
    assert headers == {"Content-Type": "application/json"}
    head = json.loads(body)
    assert head["id"] == "abc" and head["model_version"] == "3"
    assert head["parameters"] == {"path": "local"}
    assert [o["name"] for o in head["outputs"]] == ["probabilities", "label"]
    assert head["outputs"][0]["data"] == PROBS.ravel().tolist()
    assert head["outputs"][1] == {"name": "label", "datatype": "BYTES", "shape": [2],
                                  "data": LABELS}
    body, _ = _encode(None)
    assert "id" not in json.loads(body)


def test_binary_data_output_sends_every_output_as_binary() -> None:
    body, headers = _encode(_request(parameters={"binary_data_output": True}))
    assert headers["Content-Type"] == "application/octet-stream"
    head, values = split_response(body, headers)
    assert all("data" not in o for o in head["outputs"])
    assert np.array_equal(values["probabilities"], PROBS)
    assert values["label"] == LABELS
    assert head["outputs"][1]["parameters"]["binary_data_size"] == 4 + 3 + 4 + len(
        "é-ü".encode())


def test_each_output_may_choose_binary_or_json() -> None:
    request = _request(parameters={"binary_data_output": True}, outputs=[
        {"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}])
    assert not request.binary_output("label") and request.binary_output("probabilities")
    body, headers = _encode(request, v2.requested_outputs(request.outputs, "probabilities"))
    head, values = split_response(body, headers)
    assert [o["name"] for o in head["outputs"]] == ["label", "probabilities"]
    assert head["outputs"][0]["data"] == LABELS and list(values) == ["probabilities"]


def test_bytes_outputs_of_any_width_and_empty_ones() -> None:
    request = _request(parameters={"binary_data_output": True})
    words = ["", "a", "longer word", ""]
    body, headers = v2.encode_response(request, model_name="m", outputs=[
        v2.Tensor("w", "BYTES", (4,), np.asarray(words))])
    _, values = split_response(body, headers)
    assert values["w"] == words
    body, headers = v2.encode_response(request, model_name="m", outputs=[
        v2.Tensor("w", "BYTES", (0,), np.asarray([], dtype=str))])
    assert split_response(body, headers)[1]["w"] == []


def test_server_metadata_announces_the_binary_extension() -> None:
    assert v2.BINARY_EXTENSION in v2.server_metadata()["extensions"]
