"""The V2 hot path's memory: changes reach another server process within the staleness bound.

Two applications share one database (as two server processes do): ``writer`` changes the
registry through its API, ``reader`` answers inference from its serving table, which only the
database's generation counters tell about the change (no commit of its own). The bound is
``serving_refresh_s`` plus one refresh (:mod:`server.inference.table`); after waiting it, every
request answers the new state, and every answer's probabilities are the named version's own.
Also checked: the database triggers bump the counters, a process's own writes are read back
at once, and a refresh that fails partway is redone at the next one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from edgefleet.plan import PlanManifest, weights_from_bytes
from edgefleet.runtime import PlanRuntime
from registry.serving import generations
from server.inference.source import Artifacts, ModelEntry, ModelSource, ServedVersion
from server.inference.table import ServingTable
from server.main import create_app
from server.settings import ServerSettings
from tests.registry.support import PlanFiles
from tests.server.support import ADMIN, APP_KEY, Api, make_settings

APP = {"Authorization": f"Bearer {APP_KEY}"}
REFRESH_S = 0.1
#: The staleness bound, with room for one refresh on a busy machine.
BOUND_S = 2 * REFRESH_S + 1.0
ROWS = 4


@pytest.fixture
def reader(settings: ServerSettings, db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """A second application on the same database and store (another server process)."""
    other = make_settings(db_url, tmp_path, serving_refresh_s=REFRESH_S)
    with TestClient(create_app(other)) as c:
        yield c


def _runtime(files: PlanFiles, weights: bytes) -> PlanRuntime:
    manifest = PlanManifest.from_json(files.manifest)
    weights_arrays = weights_from_bytes(weights, manifest=manifest)
    return PlanRuntime.from_bytes(files.plan, manifest, weights_arrays)


def _infer(client: TestClient, x: np.ndarray, headers: dict[str, str] | None = None,
           url: str = "/v2/models/digits/infer") -> tuple[int, str, np.ndarray | None]:
    r = client.post(url, json={"inputs": [{"name": "x", "shape": list(x.shape),
                                           "datatype": "FP32", "data": x.ravel().tolist()}]},
                    headers=headers or APP)
    if r.status_code != 200:
        return r.status_code, r.json()["error"], None
    body = r.json()
    probs = next(o for o in body["outputs"] if o["datatype"] == "FP32")
    return 200, body["model_version"], np.asarray(probs["data"], np.float32).reshape(len(x), -1)


def test_triggers_bump_the_generations(api: Api, engine: Engine) -> None:
    with engine.connect() as conn:
        before = generations(conn)
    api.production()
    api.enrol("pi-1")
    with engine.connect() as conn:
        middle = generations(conn)
    assert middle["serving"] > before["serving"]
    assert middle["credentials"] == before["credentials"]  # a new token changes no cached one
    assert api.client.delete("/api/v1/devices/pi-1", headers=ADMIN).status_code == 200
    with engine.connect() as conn:
        after = generations(conn)
    assert after["credentials"] > middle["credentials"]
    assert after["serving"] == middle["serving"]


def test_an_alias_move_reaches_another_process_within_the_bound(
    api: Api, reader: TestClient, plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    api.production()
    weights2 = plan_files.perturbed_weights(5, 0.5)
    v2 = api.publish(full=False, weights=weights2, metadata={"plan_from_version": 1})
    expected = {"1": _runtime(plan_files, plan_files.weights), "2": _runtime(plan_files, weights2)}
    x = np.asarray(digits_data.x_test[:ROWS], dtype=np.float32)
    status, version, _ = _infer(reader, x)
    assert (status, version) == (200, "1")  # the reader holds version 1 now

    assert api.alias("production", v2).status_code == 200
    time.sleep(BOUND_S)
    for _ in range(20):
        status, version, probs = _infer(reader, x)
        assert (status, version) == (200, "2") and probs is not None
        # the answer is version 2's own, not a mix of one version's name and another's rows
        np.testing.assert_allclose(probs, expected["2"].predict(x), rtol=1e-5, atol=1e-6)
        assert not np.allclose(probs, expected["1"].predict(x), atol=1e-4)


def test_every_answer_is_one_versions_own_while_the_alias_moves(
    api: Api, reader: TestClient, plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    api.production()
    weights2 = plan_files.perturbed_weights(6, 0.5)
    v2 = api.publish(full=False, weights=weights2, metadata={"plan_from_version": 1})
    expected = {"1": _runtime(plan_files, plan_files.weights), "2": _runtime(plan_files, weights2)}
    x = np.asarray(digits_data.x_test[:ROWS], dtype=np.float32)
    want = {k: rt.predict(x) for k, rt in expected.items()}
    seen = []
    for i in range(30):
        if i == 10:
            assert api.alias("production", v2).status_code == 200
        status, version, probs = _infer(reader, x)
        assert status == 200 and probs is not None
        np.testing.assert_allclose(probs, want[version], rtol=1e-5, atol=1e-6)
        seen.append(version)
    time.sleep(BOUND_S)
    assert _infer(reader, x)[1] == "2"
    if "2" in seen:  # once the reader answered with version 2, it never went back to 1
        assert set(seen[seen.index("2"):]) == {"2"}


def test_an_archived_version_is_refused_within_the_bound(
    api: Api, reader: TestClient, plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    api.production()
    v2 = api.publish(full=False, weights=plan_files.perturbed_weights(7, 0.2),
                     metadata={"plan_from_version": 1})
    x = np.asarray(digits_data.x_test[:1], dtype=np.float32)
    url = f"/v2/models/digits/versions/{v2}/infer"
    assert _infer(reader, x, url=url)[:2] == (200, "2")
    r = api.client.patch(f"/api/v1/models/digits/versions/{v2}", json={"status": "ARCHIVED"},
                         headers=ADMIN)
    assert r.status_code == 200, r.text
    time.sleep(BOUND_S)
    status, message, _ = _infer(reader, x, url=url)
    assert status == 409 and "ARCHIVED" in message


def test_a_revoked_device_token_is_refused_within_the_bound(
    api: Api, reader: TestClient, digits_data  # type: ignore[no-untyped-def]
) -> None:
    api.production()
    device = api.enrol("pi-7")
    x = np.asarray(digits_data.x_test[:1], dtype=np.float32)
    assert _infer(reader, x, device)[0] == 200
    assert _infer(reader, x, device)[0] == 200  # from the reader's token cache now
    assert api.client.delete("/api/v1/devices/pi-7", headers=ADMIN).status_code == 200
    time.sleep(BOUND_S)
    for _ in range(5):
        status, message, _ = _infer(reader, x, device)
        assert status == 401 and "token" in message


def test_a_process_reads_its_own_writes_at_once(
    api: Api, client: TestClient, plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    api.production()
    v2 = api.publish(full=False, weights=plan_files.perturbed_weights(8, 0.5),
                     metadata={"plan_from_version": 1})
    x = np.asarray(digits_data.x_test[:1], dtype=np.float32)
    assert _infer(client, x)[1] == "1"
    assert api.alias("production", v2).status_code == 200
    assert _infer(client, x)[1] == "2"
    device = api.enrol("pi-8")
    assert _infer(client, x, device)[0] == 200
    assert client.delete("/api/v1/devices/pi-8", headers=ADMIN).status_code == 200
    assert _infer(client, x, device)[0] == 401


class FailsOnce:
    """The server's database source, whose next :meth:`entry` fails once when ``armed``
    (the database dropping between the generation query and the entry queries)."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.armed = False

    def generation(self, scope: str) -> int:
        return self.source.generation(scope)

    def entry(self, model: str) -> ModelEntry | None:
        if self.armed:
            self.armed = False
            raise ConnectionError("the database went away")
        return self.source.entry(model)

    def artifacts(self, version: ServedVersion) -> Artifacts:
        return self.source.artifacts(version)

    def report_damaged(self, model: str, number: int, reason: str) -> None:
        self.source.report_damaged(model, number, reason)


def test_a_refresh_that_fails_partway_is_redone_at_the_next_one(
    api: Api, client: TestClient, plan_files: PlanFiles
) -> None:
    api.production()
    v2 = api.publish(full=False, weights=plan_files.perturbed_weights(9, 0.5),
                     metadata={"plan_from_version": 1})
    source = FailsOnce(client.app.state.edgefleet.serving.table.source)  # type: ignore[attr-defined]
    table = ServingTable(source)  # another process's table on the same database
    table.refresh()
    entry = table.entry("digits")
    assert entry is not None and entry.aliases["production"] == 1

    assert api.alias("production", v2).status_code == 200
    source.armed = True
    with pytest.raises(ConnectionError):
        table.refresh()  # read the new generation, then failed reloading the entries
    held = table.cached("digits")
    assert held is not None and held.aliases["production"] == 1  # kept what it had

    assert table.refresh() is True  # the change is still pending: reloaded now
    fresh = table.cached("digits")
    assert fresh is not None and fresh.aliases["production"] == v2
    assert table.refresh() is False  # and recorded: nothing more to do
