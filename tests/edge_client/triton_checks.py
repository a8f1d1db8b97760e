"""What the standard V2 client (``tritonclient[http]``, its defaults) must be able to do with an
EdgeFleet endpoint — the server's and the agent's local one run the same checks
(``tests/server/test_tritonclient.py``, ``tests/edge_client/test_tritonclient_local.py``)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

PROBS = "probabilities"
LABEL = "label"


def connect(url: str) -> triton.InferenceServerClient:
    """A client with tritonclient's defaults (``url`` as ``host:port``, no scheme)."""
    return triton.InferenceServerClient(url=url.removeprefix("http://"))


def check_health_and_metadata(client: triton.InferenceServerClient, model: str, version: int,
                              auth: dict[str, str]) -> None:
    assert client.is_server_live(headers=dict(auth))
    assert client.is_server_ready(headers=dict(auth))
    meta = client.get_server_metadata(headers=dict(auth))
    assert meta["name"] == "edgefleet" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready(model, headers=dict(auth))
    assert client.is_model_ready(model, str(version), headers=dict(auth))
    model_meta = client.get_model_metadata(model, headers=dict(auth))
    assert model_meta["name"] == model and str(version) in model_meta["versions"]
    assert model_meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in model_meta["outputs"]] == [PROBS, LABEL]
    assert client.get_model_metadata(model, str(version), headers=dict(auth))["name"] == model


def _input(x: np.ndarray, *, binary: bool, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def check_infer(client: triton.InferenceServerClient, model: str, version: int,
                auth: dict[str, str], x: np.ndarray,
                expected: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """Binary (the defaults), JSON, FP16 and mixed requests answer ``expected(x)``'s
    probabilities and labels, and echo the request id; returns the binary answer's JSON.

    Each call gets its own headers dict: ``infer`` adds ``Inference-Header-Content-Length`` to
    the dict it is given, which would then go along with the next (JSON) request too.
    """
    want = expected(x)
    labels = [str(i).encode() for i in want.argmax(axis=1)]
    # defaults: binary input, no outputs named -> every output binary
    result = client.infer(model, [_input(x, binary=True)], request_id="req-bin",
                          headers=dict(auth))
    response = result.get_response()
    assert response["id"] == "req-bin" and response["model_version"] == str(version)
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    np.testing.assert_allclose(result.as_numpy(PROBS), want, rtol=1e-5, atol=1e-6)
    assert result.as_numpy(LABEL).tolist() == labels
    # JSON in and out, outputs named (the label only)
    result = client.infer(model, [_input(x, binary=False)], model_version=str(version),
                          outputs=[triton.InferRequestedOutput(LABEL, binary_data=False)],
                          request_id="req-json", headers=dict(auth))
    assert result.get_response()["id"] == "req-json"
    assert [o["name"] for o in result.get_response()["outputs"]] == [LABEL]
    assert result.as_numpy(LABEL).tolist() == [b.decode() for b in labels]
    # JSON input, binary probabilities; FP16 binary input (FP16 has no JSON form worth sending)
    result = client.infer(model, [_input(x, binary=False)], headers=dict(auth),
                          outputs=[triton.InferRequestedOutput(PROBS, binary_data=True)])
    np.testing.assert_allclose(result.as_numpy(PROBS), want, rtol=1e-5, atol=1e-6)
    half = x.astype(np.float16)
    result = client.infer(model, [_input(half, binary=True, datatype="FP16")], headers=dict(auth))
    np.testing.assert_allclose(result.as_numpy(PROBS), expected(half.astype(np.float32)),
                               rtol=1e-4, atol=1e-5)
    return response


def check_refusals(client: triton.InferenceServerClient, model: str, auth: dict[str, str]
                   ) -> list[str]:
    """Malformed requests through tritonclient: each a 400 with the codec's message (returned,
    in order, so that two endpoints can be compared)."""
    x = np.zeros((1, 64), dtype=np.float32)
    wrong_name = triton.InferInput("pixels", [1, 64], "FP32")
    wrong_name.set_data_from_numpy(x)
    wrong_shape = triton.InferInput("x", [1, 63], "FP32")
    wrong_shape.set_data_from_numpy(x[:, :63])
    strings = triton.InferInput("x", [1, 64], "BYTES")
    strings.set_data_from_numpy(np.array([[b"a"] * 64], dtype=np.object_))
    nan = triton.InferInput("x", [1, 64], "FP32")
    nan.set_data_from_numpy(np.full((1, 64), np.nan, dtype=np.float32))
    messages = []
    for inputs, outputs in (([wrong_name], None), ([wrong_shape], None), ([strings], None),
                            ([nan], None),
                            ([_input(x, binary=True)], [triton.InferRequestedOutput("logits")])):
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, inputs, outputs=outputs, headers=dict(auth))
        assert info.value.status() == "400", info.value
        messages.append(str(info.value.message()))
    assert "unknown input 'pixels'" in messages[0] and "does not fit" in messages[1]
    assert "BYTES is not supported" in messages[2] and "NaN" in messages[3]
    assert "unknown output" in messages[4]
    return messages


def post_without_content_type(host: str, port: int, path: str, body: bytes,
                              headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A POST with no ``Content-Type`` header at all (as tritonclient sends JSON)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
