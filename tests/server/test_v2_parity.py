"""The server's V2 routes and the agent's local endpoint share one codec (:mod:`edgefleet.v2`)
and one rule for version paths (:func:`edgefleet.bounds.path_version`): the same bodies, length
headers and paths are accepted, with the same answers, or refused, with the same messages, and
no refusal echoes more than a bounded part of the request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edge_client.agent import Agent
from edge_client.http_api import LocalServer
from edge_client.models import ModelManager
from edge_client.settings import AgentSettings
from edgefleet.v2 import INFERENCE_HEADER as HEADER
from tests.server.support import APP_KEY, Api

APP = {"Authorization": f"Bearer {APP_KEY}"}
MODEL = "digits"


def tensor(data: Any, shape: list[Any], datatype: str = "FP32", name: str = "x"
           ) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def body(*tensors: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(tensors), **extra}


GOOD = [0.5] * 64

# (case, body or raw bytes, whether the codec decides: then the messages are the same too)
CASES: list[tuple[str, Any, bool]] = [
    ("fp32", body(tensor(GOOD, [1, 64])), True),
    ("nested", body(tensor([GOOD, GOOD], [2, 64])), True),
    ("int32", body(tensor([3] * 64, [1, 64], "INT32")), True),
    ("uint8", body(tensor([16] * 64, [1, 64], "UINT8")), True),
    ("fp16", body(tensor(GOOD, [1, 64], "FP16")), True),
    ("bool", body(tensor([True, False] * 32, [1, 64], "BOOL")), True),
    ("label only", body(tensor(GOOD, [1, 64]), outputs=[{"name": "label"}]), True),
    ("fp32 with booleans", body(tensor([True, False, *GOOD[2:]], [1, 64])), True),
    ("nested booleans", body(tensor([[*GOOD[1:], True]], [1, 64])), True),
    ("bool with numbers", body(tensor([1, 0] * 32, [1, 64], "BOOL")), True),
    ("int32 with floats", body(tensor(GOOD, [1, 64], "INT32")), True),
    ("uint8 out of range", body(tensor([300] * 64, [1, 64], "UINT8")), True),
    ("fp16 overflow", body(tensor([1e6] * 64, [1, 64], "FP16")), True),
    ("strings", body(tensor(["a"] * 64, [1, 64])), True),
    ("ragged", body(tensor([GOOD, GOOD[1:]], [2, 64])), True),
    ("single example", body(tensor(GOOD, [64])), True),
    ("count mismatch", body(tensor(GOOD[4:], [1, 64])), True),
    ("wrong name", body(tensor(GOOD, [1, 64], name="pixels")), True),
    ("two inputs", body(tensor(GOOD, [1, 64]), tensor(GOOD, [1, 64])), True),
    ("zero batch", body(tensor([], [0, 64])), True),
    ("batch too large", body(tensor([0.0] * 64 * 1025, [1025, 64])), True),
    ("bytes", body(tensor(["a"] * 64, [1, 64], "BYTES")), True),
    ("unknown output", body(tensor(GOOD, [1, 64]), outputs=[{"name": "logits"}]), True),
    ("nan", (b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [NaN'
             + b", 0" * 63 + b"]}]}"), True),
    ("bad datatype", body(tensor(GOOD, [1, 64], "FLOAT")), False),
    ("no inputs", {"id": "x"}, False),
    ("not an object", [1, 2, 3], False),
    ("invalid json", b'{"inputs": [}', False),
    ("shape of booleans", body(tensor(GOOD, [True, 64])), True),
    ("shape of strings", body(tensor(GOOD, ["1", "64"])), True),
    ("shape of floats", body(tensor(GOOD, [1.0, 64])), True),
    ("33 dimensions", body(tensor([0.5], [1] * 33)), True),
    ("65 dimensions", body(tensor([0.5], [1] * 65)), True),  # beyond numpy's limit
    ("output twice", body(tensor(GOOD, [1, 64]), outputs=[{"name": "label"}] * 2), True),
    ("long input name", body(tensor(GOOD, [1, 64], name="n" * 100_000)), True),
    ("long output name", body(tensor(GOOD, [1, 64]), outputs=[{"name": "o" * 100_000}]), True),
    ("many unknown outputs", body(tensor(GOOD, [1, 64]),
                                  outputs=[{"name": f"o{i}"} for i in range(20_000)]), True),
]
#: The longest refusal message any case may get (the request is echoed cut short).
MAX_MESSAGE = 1000


@pytest.fixture
def endpoints(api: Api, tmp_path: Path, digits_plan_dir: Path,
              client: TestClient) -> Iterator[tuple[TestClient, httpx.Client]]:
    """The server (``digits`` v1 in production) and an offline agent running the same plan
    under the same name."""
    api.production(MODEL)
    device_settings = AgentSettings(data_dir=tmp_path / "device", http_port=-1)
    ModelManager(device_settings.models_dir).install_dir(digits_plan_dir, MODEL, 1)
    with Agent(device_settings) as agent:
        local = LocalServer(agent).start()
        try:
            with httpx.Client(base_url=local.url, timeout=30) as device:
                yield client, device
        finally:
            local.stop()


def _post(http: TestClient | httpx.Client, payload: Any, headers: dict[str, str]
          ) -> httpx.Response:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http.post(f"/v2/models/{MODEL}/infer", content=content,
                     headers={**headers, "content-type": "application/json"})


def test_server_and_agent_accept_and_refuse_the_same_bodies(
        endpoints: tuple[TestClient, httpx.Client]) -> None:
    server, device = endpoints
    accepted = []
    for case, payload, same_message in CASES:
        s, d = _post(server, payload, APP), _post(device, payload, {})
        assert (case, s.status_code) == (case, d.status_code), (s.text, d.text)
        if s.status_code != 200:
            assert s.status_code == 400 and set(s.json()) == set(d.json()) == {"error"}, case
            assert len(s.json()["error"]) < MAX_MESSAGE and len(d.json()["error"]) < MAX_MESSAGE
            if same_message:
                assert s.json() == d.json(), case
            else:  # pydantic (and FastAPI) word a body that is no request a little differently
                assert s.json()["error"].startswith("invalid request: "), case
                assert d.json()["error"].startswith("invalid request: "), case
            continue
        accepted.append(case)
        sent, got = s.json()["outputs"], d.json()["outputs"]
        assert [o["name"] for o in sent] == [o["name"] for o in got], case
        for a, b in zip(sent, got, strict=True):
            assert (a["shape"], a["datatype"]) == (b["shape"], b["datatype"]), case
            if a["datatype"] == "FP32":
                np.testing.assert_allclose(a["data"], b["data"], rtol=1e-5, atol=1e-6)
            else:
                assert a["data"] == b["data"], case
        assert d.json()["parameters"]["path"] == "local"
    assert accepted == ["fp32", "nested", "int32", "uint8", "fp16", "bool", "label only"]


FRAMED = json.dumps(body({"name": "x", "shape": [1, 64], "datatype": "FP32",
                          "parameters": {"binary_data_size": 256}})).encode()
BLOB = np.full(64, 0.5, dtype="<f4").tobytes()


@pytest.mark.parametrize(("case", "length", "status"), [
    ("right", str(len(FRAMED)).encode(), 200),
    ("superscript two", b"\xb2", 400),  # '²' in latin-1: str.isdigit says yes, int says no
    ("short", str(len(FRAMED) - 5).encode(), 400),
    ("long", str(len(FRAMED) + 3).encode(), 400),
    ("beyond the body", b"99999", 400),
])
def test_server_and_agent_read_the_length_header_alike(
        endpoints: tuple[TestClient, httpx.Client], case: str, length: bytes,
        status: int) -> None:
    server, device = endpoints
    headers: dict[str, Any] = {HEADER: length, "content-type": "application/octet-stream"}
    s = server.post(f"/v2/models/{MODEL}/infer", content=FRAMED + BLOB,
                    headers={**APP, **headers})
    d = device.post(f"/v2/models/{MODEL}/infer", content=FRAMED + BLOB, headers=headers)
    assert (s.status_code, d.status_code) == (status, status), (s.text, d.text)
    if status == 200:
        return
    assert HEADER in s.json()["error"] and HEADER in d.json()["error"], case
    if length.isascii():
        assert s.json() == d.json(), case
    else:  # the test client re-encodes a latin-1 header value as UTF-8: only its echo differs
        for refusal in (s, d):
            assert "is not a length within the body's" in refusal.json()["error"], case


#: Version path segments (as sent: percent-encoded) and whether they name version 1.
VERSIONS = [("1", True), ("%31", True), ("01", False), ("001", False), ("+1", False),
            ("0", False), ("-1", False), ("1.0", False), ("1%0A", False), ("%201", False),
            ("%C2%B2", False), ("%D9%A1", False), ("2147483648", False), ("1" * 30, False)]


@pytest.mark.parametrize(("segment", "names_one"), VERSIONS)
def test_server_and_agent_read_version_paths_alike(
        endpoints: tuple[TestClient, httpx.Client], segment: str, names_one: bool) -> None:
    server, device = endpoints
    good = json.dumps(body(tensor(GOOD, [1, 64]))).encode()
    base = f"/v2/models/{MODEL}/versions/{segment}"
    for method, path in (("POST", f"{base}/infer"), ("GET", base), ("GET", f"{base}/ready")):
        content = good if method == "POST" else None
        s = server.request(method, path, content=content, headers=APP)
        d = device.request(method, path, content=content)
        assert (s.status_code, d.status_code) == ((200, 200) if names_one else (404, 404)), (
            path, s.text, d.text)
        if not names_one:
            assert s.json() == d.json(), path
            assert s.json()["error"].startswith("unknown version "), path
