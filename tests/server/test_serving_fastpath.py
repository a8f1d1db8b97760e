"""The V2 fast path (``server/fastpath.py``) answers exactly as the FastAPI route does.

A request with a query string is not taken by the fast path (it goes to the route, which checks
query parameters), so the same request with and without ``?via=route`` compares the two: status,
body and the headers a client reads, for answers and for every kind of refusal.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.server.support import APP_KEY, Api

APP = {"Authorization": f"Bearer {APP_KEY}"}
GOOD = json.dumps({"id": "r-1", "inputs": [{"name": "x", "shape": [2, 64], "datatype": "FP32",
                                             "data": np.linspace(0, 1, 128).tolist()}]}).encode()
READ = ("content-type", "www-authenticate", "inference-header-content-length")


@pytest.fixture
def served(api: Api) -> Api:
    api.production()
    return api


CASES = [
    ("/v2/models/digits/infer", APP, GOOD, 200),
    ("/v2/models/digits/versions/1/infer", APP, GOOD, 200),
    ("/v2/models/digits/infer", {**APP, "Content-Type": "text/plain"}, GOOD, 200),
    ("/v2/models/digits/infer", APP, json.dumps({"inputs": [{"name": "x", "shape": [1, 64],
     "datatype": "FP32", "data": [0.0] * 64}], "parameters": {"binary_data_output": True}}
     ).encode(), 200),
    ("/v2/models/digits/infer", {}, GOOD, 401),
    ("/v2/models/digits/infer", {"Authorization": "Bearer wrong-secret-1"}, GOOD, 401),
    ("/v2/models/digits/infer", {"Authorization": "Basic abc"}, GOOD, 401),
    ("/v2/models/digits/infer", APP, b"{nope", 400),
    ("/v2/models/digits/infer", APP, GOOD.replace(b'"x"', b'"y"'), 400),
    ("/v2/models/digits/infer", {**APP, "Inference-Header-Content-Length": "9999"}, GOOD, 400),
    ("/v2/models/nope/infer", APP, GOOD, 404),
    ("/v2/models/digits/versions/9/infer", APP, GOOD, 404),
    ("/v2/models/digits/versions/01/infer", APP, GOOD, 404),
]


@pytest.mark.parametrize(("path", "headers", "body", "status"), CASES)
def test_the_fast_path_answers_as_the_route_does(
    served: Api, client: TestClient, path: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    fast = client.post(path, content=body, headers=headers)
    routed = client.post(f"{path}?via=route", content=body, headers=headers)
    assert fast.status_code == routed.status_code == status, (fast.text, routed.text)
    assert fast.content == routed.content
    for name in READ:
        assert fast.headers.get(name) == routed.headers.get(name), name
    assert fast.headers["x-request-id"] and fast.headers["x-request-id"] != routed.headers[
        "x-request-id"]
    if status >= 400:
        assert set(fast.json()) == {"error"}


def test_other_methods_and_paths_still_reach_the_routes(served: Api, client: TestClient) -> None:
    assert client.get("/v2/models/digits/infer", headers=APP).status_code == 405
    assert client.post("/v2/models/digits/infer/", content=GOOD, headers=APP).status_code == 404
    # a name outside the model-name rule is refused by the route's own validation (400)
    bad = client.post("/v2/models/-bad/infer", content=GOOD, headers=APP)
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
