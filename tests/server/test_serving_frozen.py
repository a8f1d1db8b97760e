"""The V2 path runs each loaded version as a serving copy (edgefleet.frozen) of its artifacts.

Through the real application, database and artifact store: the loaded version's interpreters run
the copy, built from the version's own weights (not the plan's baked ones), and answer what the
plan's ``infer`` signature answers; a pool told not to build copies runs the plan itself; a
weights blob damaged in the store is refused (503) and no copy is built from it.
"""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi.testclient import TestClient

from edgefleet.frozen import FrozenRuntime
from edgefleet.runtime import PlanRuntime
from registry.store import ArtifactStore
from server.inference.batcher import BatchPolicy
from server.inference.pool import RuntimePool
from server.settings import ServerSettings
from tests.registry.support import PlanFiles
from tests.server.support import APP_KEY, Api

APP = {"Authorization": f"Bearer {APP_KEY}"}


def _body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}


def _probs(client: TestClient, x: np.ndarray) -> np.ndarray:
    r = client.post("/v2/models/digits/infer", json=_body(x), headers=APP)
    assert r.status_code == 200, r.text
    out = next(o for o in r.json()["outputs"] if o["datatype"] == "FP32")
    return np.asarray(out["data"], np.float32).reshape(len(x), -1)


def _pool(client: TestClient) -> RuntimePool:
    app = client.app
    pool: RuntimePool = app.state.edgefleet.serving.pool  # type: ignore[attr-defined]
    return pool


def test_a_served_version_runs_as_a_serving_copy_of_its_own_weights(
        api: Api, client: TestClient, plan_files: PlanFiles, digits_data) -> None:  # type: ignore[no-untyped-def]
    api.production()
    x = np.asarray(digits_data.x_test[:9], dtype=np.float32)
    got = _probs(client, x)
    pool = _pool(client)
    [key] = pool.cached_keys()
    batcher = pool.cached(key)
    assert batcher is not None and batcher.runtimes
    assert all(isinstance(r, FrozenRuntime) for r in batcher.runtimes)
    manifest = plan_files.manifest_obj
    reference = PlanRuntime.from_bytes(plan_files.plan, manifest, plan_files.weights_arrays())
    np.testing.assert_allclose(got, reference.predict(x), rtol=1e-4, atol=1e-6)
    baked = PlanRuntime.from_bytes(plan_files.plan, manifest)  # the authoring-time weights
    assert not np.allclose(got, baked.predict(x), atol=1e-3)


def test_a_pool_without_serving_copies_runs_the_plan(
        api: Api, settings: ServerSettings, plan_files: PlanFiles, digits_data) -> None:  # type: ignore[no-untyped-def]
    api.production()
    source = _pool(api.client).source
    pool = RuntimePool(source, policy_for=lambda _m: BatchPolicy(), threads=1, serving_copy=False)
    version = source.entry("digits").versions[1]  # type: ignore[union-attr]
    x = np.asarray(digits_data.x_test[:5], dtype=np.float32)

    async def run() -> tuple[object, np.ndarray]:
        batcher = await pool.get(version)
        return batcher.runtimes[0], await batcher.predict(x)

    try:
        runtime, got = asyncio.run(run())
    finally:
        pool.close()
    assert type(runtime) is PlanRuntime
    np.testing.assert_allclose(got, _probs(api.client, x), rtol=1e-4, atol=1e-6)


def test_damaged_weights_in_the_store_are_refused(
        api: Api, client: TestClient, settings: ServerSettings, plan_files: PlanFiles,
        digits_data) -> None:  # type: ignore[no-untyped-def]
    api.production()
    store = ArtifactStore(settings.artifact_dir)
    weights_sha = _pool(client).source.entry("digits").versions[1].weights_sha256  # type: ignore[union-attr]
    path = store.path(weights_sha)
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF  # a weight value changes; the length does not
    path.chmod(0o644)
    path.write_bytes(bytes(blob))
    x = np.asarray(digits_data.x_test[:2], dtype=np.float32)
    r = client.post("/v2/models/digits/infer", json=_body(x), headers=APP)
    assert r.status_code == 503
    assert "damaged" in r.json()["error"]
    assert _pool(client).cached_keys() == []
