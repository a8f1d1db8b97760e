"""The inference log, delayed-label feedback and per-version monitoring, on both backends."""

from __future__ import annotations

import json
import math
import random
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from registry.evidence import bucket_upper_ms, insert_records, latency_bucket
from registry.models import InferenceRecord
from server.evidence.monitor import QUANTILES, monitor
from server.main import create_app
from server.settings import ServerSettings
from tests.server.support import ADMIN, APP_KEY, Api, make_settings

APP = {"Authorization": f"Bearer {APP_KEY}"}


def body(rows: int = 1, seed: int = 0) -> dict[str, Any]:
    x = np.random.default_rng(seed).uniform(0, 16, size=(rows, 64)).round(2)
    return {"inputs": [{"name": "x", "shape": [rows, 64], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}


def flush(client: TestClient) -> None:
    assert client.app.state.inference_log.flush(10)  # type: ignore[attr-defined]


def logged(client: TestClient, **query: Any) -> dict[str, Any]:
    r = client.get("/api/v1/inferences", params=query, headers=ADMIN)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.fixture
def served(api: Api) -> Api:
    api.production()
    return api


def test_every_inference_is_logged_once_with_its_outputs(served: Api, client: TestClient) -> None:
    r = client.post("/v2/models/digits/infer", json=body(3), headers={**APP, "X-Request-ID": "r-1"})
    assert r.status_code == 200, r.text
    labels = next(o for o in r.json()["outputs"] if o["datatype"] == "BYTES")["data"]
    wrong = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    bad = client.post("/v2/models/digits/infer", json=wrong, headers={**APP, "X-Request-ID": "r-2"})
    assert bad.status_code == 400
    flush(client)
    page = logged(client, model="digits", request_id="r-1")
    assert page["total"] == 3
    rows = sorted(page["items"], key=lambda i: i["row_index"])
    assert [i["label"] for i in rows] == labels
    for i in rows:
        assert (i["version"], i["alias"], i["caller"], i["status"]) == (1, "production",
                                                                       "app:shop", 200)
        assert 0 < i["confidence"] <= 1 and i["latency_ms"] > 0
        assert len(i["input_sha256"]) == 64 and i["inputs"] is None  # default: hash only
    refused = logged(client, errors=True)
    assert refused["total"] == 1
    assert refused["items"][0]["request_id"] == "r-2" and refused["items"][0]["label"] is None


def test_concurrent_requests_and_a_restart_lose_nothing(
    served: Api, client: TestClient, settings: ServerSettings
) -> None:
    def call(i: int) -> str:
        r = client.post("/v2/models/digits/infer", json=body(1, i),
                        headers={**APP, "X-Request-ID": f"c-{i}"})
        assert r.status_code == 200
        return str(r.headers["x-request-id"])

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(call, range(60)))
    flush(client)
    # A second instance on the same database (a restart); its log is stopped on exit, which
    # writes what it queued.
    with TestClient(create_app(settings)) as again:
        assert again.post("/v2/models/digits/infer", json=body(), headers={
            **APP, "X-Request-ID": "after"}).status_code == 200
    page = logged(client, limit=200)
    assert page["total"] == 61
    assert {i["request_id"] for i in page["items"]} == ids | {"after"}


def test_a_batch_written_twice_is_stored_once(served: Api, client: TestClient,
                                              engine: Engine) -> None:
    row = {"request_id": "dup", "row_index": 0, "created_at": datetime.now(UTC),
           "model": "digits", "version": 1, "alias": None, "variant": None, "caller": "app:x",
           "status": 200, "latency_ms": 1.0, "latency_bucket": latency_bucket(1.0),
           "label": "3", "confidence": 0.5, "input_sha256": None, "inputs": None}
    for _ in range(2):
        with engine.begin() as conn:
            insert_records(conn, [row])
    assert logged(client, request_id="dup")["total"] == 1


def test_sampled_inputs_are_stored(
    served: Api, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    settings = make_settings(db_url, tmp_path, inference_log_sample_rate=1.0)
    with TestClient(create_app(settings)) as c:
        sent = body(1, 7)
        assert c.post("/v2/models/digits/infer", json=sent, headers=APP).status_code == 200
        flush(c)
        item = logged(c)["items"][0]
    assert item["inputs"] == pytest.approx(sent["inputs"][0]["data"], rel=1e-6)


def test_feedback_is_idempotent_and_moves_accuracy(served: Api, client: TestClient) -> None:
    r = client.post("/v2/models/digits/infer", json=body(2), headers={**APP, "X-Request-ID": "f"})
    labels = next(o for o in r.json()["outputs"] if o["datatype"] == "BYTES")["data"]
    flush(client)
    wrong = "0" if labels[1] != "0" else "1"
    items = [{"request_id": "f", "row_index": 0, "label": labels[0]},
             {"request_id": "f", "row_index": 1, "label": wrong},
             {"request_id": "nope", "label": "3"}]
    first = client.post("/api/v1/feedback", json={"items": items}, headers=APP)
    assert first.status_code == 200, first.text
    assert first.json()["applied"] == 2 and first.json()["unknown"][0]["request_id"] == "nope"
    again = client.post("/api/v1/feedback", json={"items": items}, headers=APP).json()
    assert (again["applied"], again["unchanged"]) == (0, 2)
    report = client.get("/api/v1/models/digits/monitor", headers=ADMIN).json()
    v = report["versions"][0]
    assert (v["labelled"], v["correct"], v["accuracy"]) == (2, 1, 0.5)
    fixed = [{"request_id": "f", "row_index": 1, "label": labels[1]}]
    assert client.post("/api/v1/feedback", json={"items": fixed}, headers=APP).json()[
        "applied"] == 1
    v = client.get("/api/v1/models/digits/monitor", headers=ADMIN).json()["versions"][0]
    assert (v["labelled"], v["correct"]) == (2, 2)
    assert v["accuracy_windows"][0]["labelled"] == 2


@pytest.mark.parametrize(
    ("url", "params", "headers", "status"),
    [
        ("/api/v1/inferences", {}, {}, 401),
        ("/api/v1/inferences", {}, APP, 403),
        ("/api/v1/inferences", {"since": "1700000000"}, ADMIN, 422),
        ("/api/v1/inferences", {"request_id": "a\x00b"}, ADMIN, 422),
        ("/api/v1/inferences", {"version": "2"}, ADMIN, 422),
        ("/api/v1/inferences", {"limit": "0"}, ADMIN, 422),
        ("/api/v1/models/digits/monitor", {"since": "2030-01-02T00:00:00Z",
                                           "until": "2030-01-01T00:00:00Z"}, ADMIN, 422),
        ("/api/v1/models/nope/monitor", {}, ADMIN, 404),
        ("/api/v1/models/digits/monitor", {"against": "01"}, ADMIN, 422),
    ],
)
def test_bad_queries_are_refused(served: Api, client: TestClient, url: str,
                                 params: dict[str, str], headers: dict[str, str],
                                 status: int) -> None:
    r = client.get(url, params=params, headers=headers)
    assert r.status_code == status, r.text


def test_bad_feedback_is_refused(served: Api, client: TestClient) -> None:
    ok: dict[str, Any] = {"items": [{"request_id": "x", "label": "1"}]}
    assert client.post("/api/v1/feedback", json=ok).status_code == 401
    bad: dict[str, Any]
    for bad in ({"items": []}, {"items": [{"request_id": "x\x00", "label": "1"}]},
                {"items": [{"request_id": "x", "label": "1", "row_index": -1}]},
                {"items": [{"request_id": "x", "label": "1"}] * 1001},
                {"items": ok["items"], "labelled_at": 1700000000}):
        assert client.post("/api/v1/feedback", json=bad, headers=APP).status_code == 422, bad


# --- the monitoring query against a brute-force computation --------------------------------
def synthetic_rows(n: int, since: datetime, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        version = rng.choice([1, 2, 3])
        status = 200 if rng.random() > 0.1 * version else rng.choice([400, 503])
        latency = rng.lognormvariate(0, 1) * version
        k = rng.choice([1, 1, 1, 2, 3]) if status == 200 else 1
        created = since + timedelta(seconds=rng.uniform(-600, 3 * 3600 + 600))
        for j in range(k):
            label = None if status != 200 else str(rng.choice(range(version + 3)))
            rows.append({
                "request_id": f"s-{i}", "row_index": j, "created_at": created,
                "model": rng.choice(["digits", "digits", "digits", "other"]),
                "version": version, "alias": None, "variant": None, "caller": "app:x",
                "status": status, "latency_ms": latency, "latency_bucket": latency_bucket(latency),
                "label": label, "confidence": 0.5, "input_sha256": None, "inputs": None,
                "true_label": (str(rng.choice(range(4))) if label and rng.random() < 0.4
                               else None),
            })
    return rows


def brute_force(rows: list[InferenceRecord], since: datetime, until: datetime,
                window_s: int) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    inside = [r for r in rows if r.model == "digits" and since <= r.created_at < until]
    for v in sorted({r.version for r in inside if r.row_index == 0}):
        mine = [r for r in inside if r.version == v]
        reqs = [r for r in mine if r.row_index == 0]
        lat = sorted(r.latency_ms for r in reqs)
        answered = [r for r in mine if r.status < 400]
        labelled = [r for r in answered if r.true_label is not None]
        preds: dict[str, int] = {}
        for r in answered:
            preds[str(r.label)] = preds.get(str(r.label), 0) + 1
        windows: dict[int, list[int]] = {}
        for r in labelled:
            w = int((int(r.created_at.timestamp()) - int(since.timestamp())) // window_s)
            windows.setdefault(w, [0, 0])
            windows[w][0] += 1
            windows[w][1] += r.label == r.true_label
        out[v] = {
            "requests": len(reqs),
            "errors": sum(r.status >= 400 for r in reqs),
            "latency": {q: bucket_upper_ms(latency_bucket(lat[max(1, math.ceil(q * len(lat)))
                                                              - 1])) for q in QUANTILES},
            "predictions": preds,
            "labelled": len(labelled),
            "correct": sum(r.label == r.true_label for r in labelled),
            "windows": [tuple(windows[w]) for w in sorted(windows)],
        }
    return out


def test_monitor_equals_a_brute_force_computation(served: Api, client: TestClient,
                                                  engine: Engine) -> None:
    since = datetime(2030, 1, 1, tzinfo=UTC)
    until = since + timedelta(hours=3)
    with engine.begin() as conn:
        insert_records(conn, synthetic_rows(1500, since))
    with Session(engine) as session:
        stored = list(session.exec(select(InferenceRecord)).all())
        report = monitor(session, "digits", since, until, against=1, window_s=1800)
    expected = brute_force(stored, since, until, 1800)
    assert [v.version for v in report.versions] == sorted(expected)
    for v in report.versions:
        e = expected[v.version]
        assert (v.requests, v.errors, v.labelled, v.correct) == (
            e["requests"], e["errors"], e["labelled"], e["correct"])
        assert v.latency_ms == {f"p{round(q * 100)}": e["latency"][q] for q in QUANTILES}
        assert v.predictions == e["predictions"]
        assert [(w.labelled, w.correct) for w in v.accuracy_windows] == e["windows"]
    shifts = {v.version: v.shift for v in report.versions}
    assert shifts[1] == pytest.approx(0.0, abs=1e-12) and shifts[3] is not None and shifts[3] > 0
    r = client.get("/api/v1/models/digits/monitor", headers=ADMIN, params={
        "since": since.isoformat(), "until": until.isoformat(), "against": "1",
        "window_s": "1800"})
    assert r.status_code == 200
    assert r.json()["versions"] == [v.model_dump(mode="json") for v in report.versions]


def test_retention_prunes_old_records_in_batches(served: Api, client: TestClient,
                                                 engine: Engine) -> None:
    log = client.app.state.inference_log  # type: ignore[attr-defined]
    log.prune_interval_s = 0  # the writer's own timed prune would race the one measured here
    log.prune_now()
    now = datetime.now(UTC)
    rows = synthetic_rows(300, now - timedelta(days=40), seed=3)
    fresh = synthetic_rows(20, now - timedelta(hours=4), seed=4)
    for r in fresh:
        r["request_id"] = "fresh-" + r["request_id"]
    with engine.begin() as conn:
        insert_records(conn, rows + fresh)
    log.prune_batch = 37
    deleted = log.prune_now()
    assert deleted == len(rows)
    remaining = logged(client, limit=200)
    assert remaining["total"] == len(fresh)
    assert all(i["request_id"].startswith("fresh-") for i in remaining["items"])


# --- the operator's CLI over the REST API ----------------------------------------------------
def test_registry_cli_prints_tables_and_json(
    served: Api, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from edgefleet_cli import registry as cli
    from edgefleet_cli.main import app

    assert client.post("/v2/models/digits/infer", json=body(), headers={
        **APP, "X-Request-ID": "cli-1"}).status_code == 200
    flush(client)
    # the app over ASGI, not a socket; lent, not entered: each CLI call's ``with`` would
    # start the app's lifespan again and leave the fixture's own one never shut down
    monkeypatch.setattr(cli, "_client", lambda url: nullcontext(client))
    client.headers["X-Admin-Key"] = ADMIN["X-Admin-Key"]
    runner = CliRunner()
    out = runner.invoke(app, ["registry", "models"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0].split()[:2] == ["name", "latest_version"]
    assert "digits" in out.output
    out = runner.invoke(app, ["registry", "inferences", "--model", "digits", "--json"])
    assert out.exit_code == 0, out.output
    assert [i["request_id"] for i in json.loads(out.output)["items"]] == ["cli-1"]
    out = runner.invoke(app, ["registry", "monitor", "digits"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[2].split()[:3] == ["1", "1", "0"]  # version, requests, errors
    assert "p50_ms" in out.output.splitlines()[1].split()  # latency columns name their unit
    for args in (["versions", "digits"], ["aliases", "digits"], ["history", "digits"]):
        assert runner.invoke(app, ["registry", *args]).exit_code == 0
    out = runner.invoke(app, ["registry", "monitor", "nope"])
    assert out.exit_code == 1 and "404" in out.output


def test_registry_cli_needs_the_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from edgefleet_cli.main import app

    monkeypatch.delenv("EDGEFLEET_ADMIN_KEY", raising=False)
    out = CliRunner().invoke(app, ["registry", "models"])
    assert out.exit_code != 0 and "EDGEFLEET_ADMIN_KEY" in out.output
