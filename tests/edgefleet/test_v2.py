"""The one V2 codec (:mod:`edgefleet.v2`): datatypes, refusals, outputs, metadata, the client side.
(``tests/server/test_v2_parity.py`` checks that the server and the agent answer alike.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet import v2
from edgefleet.errors import InputError
from edgefleet.plan import PlanManifest


def tensor(data: Any, shape: list[int], datatype: str = "FP32", name: str = "x"
           ) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


# --- the codec on its own -----------------------------------------------------------------------
@pytest.mark.parametrize(("datatype", "data", "dtype"), [
    ("BOOL", [True, False], np.bool_), ("UINT8", [0, 255], np.uint8),
    ("INT8", [-128, 127], np.int8), ("INT64", [-(2**63), 2**63 - 1], np.int64),
    ("UINT64", [0, 2**64 - 1], np.uint64), ("FP16", [0.5, 2], np.float16),
    ("FP32", [1, 2.5], np.float32), ("FP64", [1e300, -3], np.float64),
])
def test_every_numeric_datatype_decodes_to_its_dtype(datatype: str, data: list[Any],
                                                     dtype: type) -> None:
    out = v2.decode_tensor(v2.InferTensor.model_validate(tensor(data, [2], datatype)))
    assert out.dtype == np.dtype(dtype) and out.shape == (2,)
    assert out.tolist() == np.asarray(data, dtype=dtype).tolist()


@pytest.mark.parametrize(("datatype", "data", "message"), [
    ("FP32", [True, 0.5], "booleans"), ("BOOL", [1, 0], "true/false"),
    ("INT32", [1.5, 2], "integers"), ("UINT8", [256, 0], "outside the range of UINT8"),
    ("UINT8", [-1, 0], "outside the range"), ("INT64", [2**64, 0], "outside the range"),
    ("UINT64", [-1, 2**64 - 1], "outside"),
    ("FP32", ["1.5", 2], "non-numeric"), ("FP32", [[1.0], [2.0, 3.0]], "regular"),
    ("FP32", [None, 1], "non-numeric"), ("BYTES", ["a", "b"], "not supported"),
    ("FP32", [1.0, 2.0, 3.0], "needs 2"),
])
def test_data_must_match_the_datatype_and_shape(datatype: str, data: list[Any],
                                                message: str) -> None:
    with pytest.raises(v2.TensorError, match=message) as info:
        v2.decode_tensor(v2.InferTensor.model_validate(tensor(data, [2], datatype)))
    assert isinstance(info.value, InputError)  # a 400 wherever it is raised


def test_nested_data_of_the_declared_shape_equals_flat_data() -> None:
    flat = v2.decode_tensor(v2.InferTensor.model_validate(tensor([1, 2, 3, 4], [2, 2])))
    nested = v2.decode_tensor(v2.InferTensor.model_validate(tensor([[1, 2], [3, 4]], [2, 2])))
    assert np.array_equal(flat, nested) and flat.dtype == np.float32
    with pytest.raises(v2.TensorError, match="nested data has shape"):
        v2.decode_tensor(v2.InferTensor.model_validate(tensor([[1, 2], [3, 4]], [4])))



def _large_body(data: list[Any], datatype: str = "FP32", request_id: str | None = None
                ) -> bytes:
    """A request whose JSON passes the size from which its text is searched for booleans."""
    body: dict[str, Any] = {"inputs": [tensor(data, [len(data)], datatype)]}
    if request_id is not None:
        body["id"] = request_id
    raw = json.dumps(body).encode()
    assert len(raw) >= 2048
    return raw


@pytest.mark.parametrize(("odd", "message"), [
    (True, "booleans"), ("1.5", "non-numeric"), (None, "non-numeric"), ([1.0], "regular"),
])
def test_a_large_float_tensor_is_refused_as_a_small_one(odd: Any, message: str) -> None:
    """Large bodies skip the pass over the elements' types unless their text has a boolean:
    the same values are refused with the same words either way."""
    data = [0.5] * 600 + [odd]
    with pytest.raises(v2.TensorError, match=message):
        v2.decode_request(_large_body(data))
    with pytest.raises(v2.TensorError, match=message):
        v2.decode_tensor(v2.InferTensor.model_validate(tensor(data, [len(data)])))


@pytest.mark.parametrize(("datatype", "tail"), [
    ("FP32", [2, -3, 2**70]), ("FP16", [0.5, 70000.0]), ("FP64", [1e300, 7]),
])
def test_a_large_float_tensor_decodes_as_a_small_one(datatype: str, tail: list[Any]) -> None:
    data = [0.25] * 600 + tail
    decoded = v2.decode_request(_large_body(data, datatype)).inputs[0].array
    expected = v2.decode_tensor(v2.InferTensor.model_validate(tensor(data, [len(data)],
                                                                     datatype)))
    assert decoded.dtype == expected.dtype == np.dtype(v2.DTYPES[datatype])
    assert np.array_equal(decoded, expected, equal_nan=True)
    # the word "true" elsewhere in the text only sends the tensor the element-wise way
    again = v2.decode_request(_large_body(data, datatype, request_id="true")).inputs[0].array
    assert np.array_equal(again, expected, equal_nan=True)

def test_outputs_metadata_and_the_client_side_round_trip(digits_plan_dir: Path) -> None:
    manifest = PlanManifest.load(digits_plan_dir / "manifest.json")
    probs = np.eye(3, manifest.output.n_classes, dtype=np.float32)
    labels = v2.predicted_labels(probs, manifest.output.class_labels)
    assert labels == ["0", "1", "2"]
    names = v2.requested_outputs(None, manifest.output.name)
    response = v2.InferenceResponse(model_name="m", outputs=v2.encode_outputs(
        probs, labels, manifest.output.name, names))
    assert np.array_equal(v2.probs_from_response(response, 3), probs)
    assert v2.labels_from_response(response) == labels
    only = [v2.RequestedOutput(name=v2.LABEL_OUTPUT)]
    assert v2.requested_outputs(only, manifest.output.name) == [v2.LABEL_OUTPUT]
    with pytest.raises(v2.TensorError, match="unknown output"):
        v2.requested_outputs([v2.RequestedOutput(name="logits")], manifest.output.name)
    meta = v2.model_metadata("m", [2], manifest, version="2")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["parameters"]["version"] == "2" and meta["versions"] == ["2"]
    request = v2.request_from_array(np.zeros((2, 64), dtype=np.float64))
    assert request.inputs[0].datatype == "FP32" and request.inputs[0].shape == [2, 64]


# --- shapes, outputs and what a refusal echoes ----------------------------------------------
def _decode(body: dict[str, Any]) -> v2.DecodedRequest:
    return v2.decode_request(json.dumps(body).encode())


@pytest.mark.parametrize("shape", [[True, 64], ["1", "64"], [1.0, 64], [1, None]])
def test_a_shape_takes_json_integers_only(shape: list[Any]) -> None:
    with pytest.raises(v2.TensorError, match=r"inputs\.0\.shape\.\d: Input should be a valid "
                       "integer"):
        _decode({"inputs": [tensor([0.5] * 64, shape)]})


def test_a_shape_has_at_most_max_dimensions() -> None:
    ok = _decode({"inputs": [tensor([0.5], [1] * v2.MAX_DIMENSIONS)]})
    assert ok.inputs[0].array.ndim == v2.MAX_DIMENSIONS
    for n in (v2.MAX_DIMENSIONS + 1, 65, 1000):  # beyond numpy's own limit too (64)
        with pytest.raises(v2.TensorError, match=f"shape has {n} dimensions; at most "
                           f"{v2.MAX_DIMENSIONS} are accepted"):
            _decode({"inputs": [tensor([0.5], [1] * n)]})


def test_an_output_named_twice_is_refused() -> None:
    twice = [v2.RequestedOutput(name=v2.LABEL_OUTPUT)] * 2
    with pytest.raises(v2.TensorError, match="output 'label' is requested more than once"):
        v2.requested_outputs(twice, "probabilities")
    both = [v2.RequestedOutput(name="probabilities"), v2.RequestedOutput(name=v2.LABEL_OUTPUT)]
    assert v2.requested_outputs(both, "probabilities") == ["probabilities", v2.LABEL_OUTPUT]


def test_refusals_echo_a_bounded_amount_of_the_request() -> None:
    huge = "n" * 1_000_000
    for body in ({"inputs": [tensor([0.5], [1], name=huge)]},
                 {"inputs": [tensor([0.5], [1])], "outputs": [{"name": huge}]}):
        with pytest.raises(v2.TensorError, match=f"at most {v2.MAX_NAME} characters") as info:
            _decode(body)
        assert len(str(info.value)) < 200
    many = [v2.RequestedOutput(name=f"o{i}") for i in range(30_000)]
    with pytest.raises(v2.TensorError, match=r"\['o0', 'o1', 'o2', 'o3', 'o4'\] and 29995 "
                       "more") as info:
        v2.requested_outputs(many, "probabilities")
    assert len(str(info.value)) < 200
    assert v2.shown("ab") == "'ab'"
    assert len(v2.shown("é" * 10_000)) < v2.MAX_NAME + 40


def test_predicted_labels_are_the_most_probable_class_of_each_row() -> None:
    probs = np.asarray([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]], dtype=np.float32)
    assert v2.predicted_labels(probs, ["a", "b", "c"]) == ["b", "a", "c"]
