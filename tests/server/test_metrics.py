"""Prometheus metrics scraped from real processes: two uvicorn workers on PostgreSQL, an edge
agent, and the aggregation (a ServerApp-side round loop in one process, the controller serving
the sum in another).

The server runs with ``--workers 2`` and ``PROMETHEUS_MULTIPROC_DIR``: requests land on either
worker and ``/metrics`` (answered by either) must count every one of them exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgefleet.datasets import Dataset
from tests.registry.support import PostgresDatabases
from tests.server.processes import (
    ADMIN,
    CLI,
    ENROL_TOKEN,
    Proc,
    enroll,
    free_port,
    publish,
    sample,
    scrape,
    set_alias,
    spawn,
    start_agent,
    start_server,
    total,
    wait_http,
)

pytestmark = pytest.mark.slow
MODEL = "digits-metrics"
REPO = Path(__file__).resolve().parents[2]
REQS = "edgefleet_http_requests_total"


@dataclass
class Fleet:
    server: Proc
    agent: Proc
    multiproc: Path
    token: str  # device d2's bearer token (enrolled by the test itself)
    x: np.ndarray


def _infer_body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.astype(np.float32).ravel().tolist()}]}


def _wait(what: str, check, timeout: float = 45.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases,
          digits_plan_dir: Path, digits_data: Dataset) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("metrics")
    multiproc = root / "prom"
    multiproc.mkdir()
    db_url = postgres.create("metrics")
    server = start_server(root, db_url, workers=2,
                          env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc)})
    agent: Proc | None = None
    try:
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as admin:
            assert publish(admin, MODEL, digits_plan_dir) == 1
            assert publish(admin, MODEL, digits_plan_dir, plan_from=1) == 2
            set_alias(admin, MODEL, "production", 1)
            r = httpx.post(f"{server.url}/api/v1/devices/enroll", json={
                "enrollment_token": ENROL_TOKEN, "device_id": "d2", "model": MODEL})
            assert r.status_code == 201, r.text
            token = r.json()["device_token"]
            data_dir = root / "agent-d1"
            enroll(server.url, data_dir, "d1", model=MODEL)
            agent = start_agent(root, data_dir, name="agent-d1")
            wait_http(agent, f"{agent.url}/v2/health/ready", timeout=60)
            x = digits_data.x_test[:8]
            for _ in range(3):  # local inference: the agent reports its drift summaries
                r = httpx.post(f"{agent.url}/v2/models/{MODEL}/infer", json=_infer_body(x))
                assert r.status_code == 200, r.text
            _wait("the agent's drift summary at the server", lambda: any(
                rep.get("drift") for rep in admin.get(
                    "/api/v1/telemetry", params={"device": "d1"}).json()["items"]))
        yield Fleet(server, agent, multiproc, token, x)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        postgres.drop(db_url)


def test_requests_on_both_workers_are_counted_once(fleet: Fleet) -> None:
    route = dict(method="GET", route="/api/v1/models/{model}", status="200")
    before = total(scrape(f"{fleet.server.url}/metrics"), REQS, **route)

    def get(_: int) -> int:
        return httpx.get(f"{fleet.server.url}/api/v1/models/{MODEL}", headers=ADMIN).status_code

    sent, pids = 0, set[str]()
    with ThreadPoolExecutor(8) as pool:
        while len(pids) < 2 and sent < 24 * 5:  # concurrent connections reach both workers
            assert set(pool.map(get, range(24))) == {200}
            sent += 24
            pids = {p.stem.rsplit("_", 1)[-1] for p in fleet.multiproc.glob("counter_*.db")}
    assert len(pids) >= 2, f"one worker answered everything: {pids}"
    missing = httpx.get(f"{fleet.server.url}/api/v1/models/no-such-model", headers=ADMIN)
    assert missing.status_code == 404
    for _ in range(4):  # whichever worker answers the scrape, it sums over both
        after = scrape(f"{fleet.server.url}/metrics")
        assert total(after, REQS, **route) - before == sent
        assert total(after, REQS, route="/api/v1/models/{model}", status="404") >= 1
    hist = "edgefleet_http_request_duration_seconds_count"
    assert sample(after, hist, method="GET", route="/api/v1/models/{model}") >= sent + 1
    assert sample(after, "edgefleet_http_request_duration_seconds_bucket", method="GET",
                  route="/api/v1/models/{model}", le="+Inf") >= sent + 1
    assert total(after, REQS, route="<unmatched>") == 0  # nothing yet: no label per raw path
    assert httpx.get(f"{fleet.server.url}/no/such/path").status_code == 404
    assert total(scrape(f"{fleet.server.url}/metrics"), REQS, route="<unmatched>") == 1


def test_inference_is_counted_by_model_version_and_variant(fleet: Fleet) -> None:
    url, body = fleet.server.url, _infer_body(fleet.x)
    inf = "edgefleet_inference_requests_total"
    before = scrape(f"{url}/metrics")
    auth = {"Authorization": f"Bearer {fleet.token}"}
    for _ in range(3):
        assert httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, headers=auth
                          ).status_code == 200
    assert httpx.post(f"{url}/v2/models/{MODEL}/versions/2/infer", json=body, headers=auth
                      ).status_code == 200
    assert httpx.post(f"{url}/v2/models/{MODEL}/versions/9/infer", json=body, headers=auth
                      ).status_code == 404
    after = scrape(f"{url}/metrics")

    def delta(**labels: str) -> float:
        return total(after, inf, **labels) - total(before, inf, **labels)

    assert delta(model=MODEL, version="1", variant="production", status="200") == 3
    assert delta(model=MODEL, version="2", variant="pinned", status="200") == 1
    assert delta(model=MODEL, variant="pinned", status="404") == 1
    assert total(after, "edgefleet_inference_duration_seconds_count", model=MODEL,
                 variant="production") >= 3


def test_telemetry_intake_by_outcome(fleet: Fleet) -> None:
    url, auth = fleet.server.url, {"Authorization": f"Bearer {fleet.token}"}
    tel = "edgefleet_telemetry_reports_total"
    now = datetime.now(UTC)
    report = {"idempotency_key": uuid.uuid4().hex, "model": MODEL, "version": 1,
              "window_start": (now - timedelta(minutes=1)).isoformat(),
              "window_end": now.isoformat(), "inference": {"local": 4}}
    before = scrape(f"{url}/metrics")
    post = f"{url}/api/v1/devices/d2/telemetry"
    assert httpx.post(post, json=report, headers=auth).status_code == 201
    assert httpx.post(post, json=report, headers=auth).status_code == 200  # the retry
    assert httpx.post(post, json={**report, "version": "x"}, headers=auth).status_code == 422
    after = scrape(f"{url}/metrics")
    assert sample(after, tel, outcome="accepted") - total(before, tel, outcome="accepted") >= 1
    assert sample(after, tel, outcome="duplicate") - total(before, tel, outcome="duplicate") == 1
    assert sample(after, tel, outcome="refused") - total(before, tel, outcome="refused") == 1


def test_fleet_gauges_come_from_the_database(fleet: Fleet) -> None:
    s = scrape(f"{fleet.server.url}/metrics")
    assert sample(s, "edgefleet_devices", state="enrolled") == 2
    assert sample(s, "edgefleet_devices", state="revoked") == 0
    assert sample(s, "edgefleet_devices_seen", window="5m") == 2
    assert sample(s, "edgefleet_devices_running", model=MODEL, version="1") >= 1
    assert sample(s, "edgefleet_fleet_drift_reports", model=MODEL, version="1") >= 1
    share = sample(s, "edgefleet_fleet_drift_share_drifted", model=MODEL, version="1")
    assert 0.0 <= share <= 1.0
    assert sample(s, "edgefleet_fleet_drift_max_psi", model=MODEL, version="1") >= 0.0


def test_agent_metrics_count_local_and_fallback_predictions(fleet: Fleet) -> None:
    url, body = fleet.agent.url, _infer_body(fleet.x)
    before = scrape(f"{url}/metrics")
    for _ in range(4):
        assert httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body).status_code == 200
    r = httpx.post(f"{url}/v2/models/{MODEL}/versions/2/infer", json=body)  # not installed
    assert r.status_code == 200 and r.json()["parameters"]["path"] == "fallback"
    assert httpx.post(f"{url}/v2/models/{MODEL}/infer", json={"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    ).status_code == 400  # refused before predicting: counted neither as local nor fallback
    after = scrape(f"{url}/metrics")
    pred = "edgefleet_agent_predictions_total"
    assert sample(after, pred, path="local") - sample(before, pred, path="local") == 4
    assert sample(after, pred, path="fallback") - sample(before, pred, path="fallback") == 1
    rows = "edgefleet_agent_prediction_rows_total"
    assert sample(after, rows, path="local") - sample(before, rows, path="local") == 4 * 8
    assert sample(after, "edgefleet_agent_prediction_duration_seconds_count", path="local") >= 4
    assert sample(after, "edgefleet_agent_model_version", model=MODEL) == 1
    info = [k for k in after if k[0] == "edgefleet_agent_model_info"]
    assert len(info) == 1 and ("version", "1") in info[0][1]
    assert sample(after, "edgefleet_agent_outbox_depth") >= 0
    assert sample(after, "edgefleet_agent_eligible") in (0.0, 1.0)
    assert sample(after, "edgefleet_agent_labelled_examples") == 0


_ROUND = textwrap.dedent("""
    from aggregation.rounds import RoundRunner, RoundSettings
    from aggregation.selection import UniformSelection
    from aggregation.strategies import build_strategy
    from tests.aggregation.harness import federation
    from tests.aggregation.toy import toy_client_app, toy_manifest, zeros

    settings = RoundSettings(model="toy", target_clients=5, min_reports=2, poll_interval_s=0.05,
                             query_timeout_s=5.0, train_timeout_s=5.0, wait_for_nodes_s=5.0)
    behaviours = ["honest", "honest", "honest", "nan", "decline"]
    with federation(toy_client_app(behaviours), len(behaviours)) as (grid, _):
        runner = RoundRunner(grid, toy_manifest(), build_strategy("fedavg", None),
                             UniformSelection(), settings=settings)
        report = runner.run_round(1, zeros()).report
    print(report.summary_line())
    assert report.ok, report.summary_line()
""")


def test_aggregation_metrics_outlive_the_serverapp_process(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A round in one process (as the SuperLink's ServerApp process would run it), then the
    controller in another serving the sum from the shared multiprocess directory."""
    shared = tmp_path / "fl-prom"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _ROUND], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, **env},
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    port = free_port()
    controller = spawn("controller", [
        *CLI, "fl", "controller", "--model", MODEL, "--server-url", fleet.server.url,
        "--max-iterations", "60", "--interval-s", "0.5", "--schedule-hours", "0",
        "--metrics-port", str(port)], tmp_path, {**env, "EDGEFLEET_ADMIN_KEY": ADMIN[
            "X-Admin-Key"]})
    try:
        wait_http(controller, f"http://127.0.0.1:{port}/metrics", timeout=30)
        s = _wait("a controller decision", lambda: (m := scrape(
            f"http://127.0.0.1:{port}/metrics")) and total(
                m, "edgefleet_fl_controller_decisions_total") >= 1 and m)
    finally:
        controller.stop()
    assert sample(s, "edgefleet_fl_rounds_total", status="ok") == 1
    assert sample(s, "edgefleet_fl_round_duration_seconds_count", status="ok") == 1
    assert sample(s, "edgefleet_fl_updates_accepted_total") == 3
    assert sample(s, "edgefleet_fl_updates_refused_total", reason="not-finite") == 1
    assert sample(s, "edgefleet_fl_replies_total", kind="replied") == 4
    assert sample(s, "edgefleet_fl_replies_total", kind="declined") == 1
    decisions = [dict(k[1]) for k in s if k[0] == "edgefleet_fl_controller_decisions_total"]
    assert all(d["start"] == "false" for d in decisions), json.dumps(decisions)


def test_pending_request_samples_are_what_inc_and_observe_give() -> None:
    """Requests recorded in one turn of an event loop are added together once it ends; the
    counts, bucket counts and sum are those of one ``inc`` and ``observe`` per request (a value
    on a bucket's bound goes into that bucket)."""
    import asyncio

    from prometheus_client import CollectorRegistry, Counter, Histogram

    from server.metrics import _PENDING, LATENCY_BUCKETS

    registry = CollectorRegistry()
    made = [(Counter(f"c{i}", "c", registry=registry),
             Histogram(f"h{i}", "h", registry=registry, buckets=LATENCY_BUCKETS))
            for i in range(2)]
    values = [0.001, 0.0011, 0.005, 0.0049, 20.0, 0.0, 0.3]
    pending, direct = made
    for v in values:
        direct[0].inc()
        direct[1].observe(v)

    async def burst() -> list[float | None]:
        for v in values:
            _PENDING.add(((pending[0],), (pending[1],)), v)
        before = registry.get_sample_value("c0_total")
        await asyncio.sleep(0)  # one turn: the pending samples are added
        return [before]

    assert asyncio.run(burst()) == [0.0]
    samples = {(s.name.removeprefix("c0").removeprefix("h0"), tuple(s.labels.items())): s.value
               for m in registry.collect() if m.name in ("c0", "h0") for s in m.samples
               if not s.name.endswith("_created")}
    direct_samples = {(s.name.removeprefix("c1").removeprefix("h1"), tuple(s.labels.items())):
                      s.value for m in registry.collect() if m.name in ("c1", "h1")
                      for s in m.samples if not s.name.endswith("_created")}
    assert samples == direct_samples and samples[("_total", ())] == len(values)
