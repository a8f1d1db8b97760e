"""Inference runners as real processes: two behind nginx serve a model pulled from a real server
(on PostgreSQL), follow an alias move within their bound, refuse tampered downloads, hold no
database connection, and one is stopped under load without a failed request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet import v2
from edgefleet.datasets import Dataset
from tests.registry.support import PostgresDatabases, postgres  # noqa: F401  (fixture)
from tests.server.processes import ADMIN, Proc, publish, scrape, set_alias, start_server, total
from tests.server.runner_support import (
    APP,
    APP_KEY,
    RUNNER_KEY,
    TamperingProxy,
    open_files,
    reload_balancer,
    scaled_weights,
    socket_peers,
    start_balancer,
    start_runner,
)

pytestmark = pytest.mark.slow
REFRESH_S = 0.5
#: The stated bound (server/runner/settings.py): the poll interval plus one snapshot poll; the
#: allowance for one poll and one version load on a busy two-core machine is generous.
POLL_ALLOWANCE_S = 5.0
POSTGRES_PORT = 5432


@dataclass
class Fleet:
    root: Path
    server: Proc
    runners: list[Proc]
    balancer: Proc
    public_key: str
    procs: list[Proc] = field(default_factory=list)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases,  # noqa: F811
          digits_plan_dir: Path) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("runners")
    db_url = postgres.create("runner")
    procs: list[Proc] = []
    try:
        server = start_server(root, db_url, env={"EDGEFLEET_SERVER_RUNNER_KEYS": RUNNER_KEY,
                                                 "EDGEFLEET_SERVER_INFERENCE_KEYS": APP_KEY})
        procs.append(server)
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as admin:
            assert publish(admin, "digits", digits_plan_dir) == 1
            set_alias(admin, "digits", "production", 1)
            second = scaled_weights(digits_plan_dir, root / "v2")
            assert publish(admin, "digits", digits_plan_dir, weights=second, plan_from=1) == 2
            info = admin.get("/api/v1/models/digits/versions/1").json()
        public_key = info["signature"]["key_chain"][0]["public_key"]
        env = {"EDGEFLEET_RUNNER_REFRESH_INTERVAL_S": str(REFRESH_S),
               "EDGEFLEET_RUNNER_DRAIN_S": "2", "EDGEFLEET_RUNNER_MODELS": "digits",
               "EDGEFLEET_RUNNER_SIGNING_PUBLIC_KEYS": public_key}
        runners = [start_runner(root, server.url, name=f"runner-{i}", env=env) for i in (1, 2)]
        procs += runners
        balancer = start_balancer(root, [r.url.removeprefix("http://") for r in runners])
        procs.append(balancer)
        yield Fleet(root, server, runners, balancer, public_key, procs)
    finally:
        for p in reversed(procs):
            p.stop()
        postgres.drop(db_url)


def _infer(url: str, x: np.ndarray, client: httpx.Client | None = None) -> httpx.Response:
    body = v2.request_from_array(x).model_dump(exclude_none=True)
    if client is not None:
        return client.post(f"{url}/v2/models/digits/infer", json=body)
    return httpx.post(f"{url}/v2/models/digits/infer", json=body, headers=APP, timeout=30)


def _probs(response: httpx.Response, n: int) -> np.ndarray:
    assert response.status_code == 200, response.text
    return v2.probs_from_response(v2.InferenceResponse.model_validate(response.json()), n)


def test_runners_serve_the_registry_model(fleet: Fleet, digits_data: Dataset) -> None:
    x = digits_data.x_test[:16]
    reference = _probs(_infer(fleet.server.url, x), len(x))
    for url in [r.url for r in fleet.runners] + [fleet.balancer.url]:
        r = _infer(url, x)
        assert r.json()["model_version"] == "1"
        assert r.json()["parameters"] == {"alias": "production"}
        np.testing.assert_allclose(_probs(r, len(x)), reference, atol=1e-6)
    # the runners refuse what the server refuses, in the V2 error shape
    runner = fleet.runners[0].url
    assert httpx.post(f"{runner}/v2/models/digits/infer", json={}).status_code == 401
    bad = httpx.post(f"{runner}/v2/models/digits/infer", headers=APP, content=b"{not json")
    assert bad.status_code == 400 and "error" in bad.json()
    missing = httpx.post(f"{runner}/v2/models/nope/infer", headers=APP,
                         json=v2.request_from_array(x).model_dump(exclude_none=True))
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    # a tensor the plan cannot take: the same refusal from the runner and the server
    wrong = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    answers = [httpx.post(f"{url}/v2/models/digits/infer", headers=APP, json=wrong)
               for url in (fleet.server.url, runner)]
    assert [a.status_code for a in answers] == [400, 400]
    assert answers[0].json() == answers[1].json()
    # only the V2 family, health and metrics: no registry API on a runner
    assert httpx.get(f"{runner}/api/v1/models", headers=ADMIN).status_code == 404
    assert "edgefleet_runner_inference_requests_total" in httpx.get(f"{runner}/metrics").text


def test_an_alias_move_reaches_both_runners_within_the_bound(fleet: Fleet,
                                                             digits_data: Dataset) -> None:
    x = digits_data.x_test[:4]
    with httpx.Client(base_url=fleet.server.url, headers=ADMIN, timeout=30) as admin:
        set_alias(admin, "digits", "production", 2)
        moved = time.monotonic()
        try:
            time.sleep(REFRESH_S)
            seen: dict[str, float] = {}
            while len(seen) < len(fleet.runners) and time.monotonic() - moved < 60:
                for runner in fleet.runners:
                    if runner.url not in seen and _infer(runner.url, x).json()[
                            "model_version"] == "2":
                        seen[runner.url] = time.monotonic() - moved
            assert len(seen) == 2, f"not every runner moved to version 2: {seen}"
            assert max(seen.values()) <= REFRESH_S + POLL_ALLOWANCE_S, seen
            for runner in fleet.runners:  # and every later request stays there
                assert _infer(runner.url, x).json()["model_version"] == "2"
        finally:
            set_alias(admin, "digits", "production", 1)


def _wait_version(runners: list[Proc], x: np.ndarray, version: str) -> list[dict[str, object]]:
    """Each runner's first answer from ``version`` (fails after 60 s)."""
    answers: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + 60
    while len(answers) < len(runners) and time.monotonic() < deadline:
        for runner in runners:
            body = _infer(runner.url, x).json()
            if runner.url not in answers and body["model_version"] == version:
                answers[runner.url] = body
        time.sleep(0.1)
    assert len(answers) == len(runners), f"not every runner answers version {version}"
    return list(answers.values())


def test_runners_follow_a_rollout(fleet: Fleet, digits_data: Dataset) -> None:
    x = digits_data.x_test[:4]
    _wait_version(fleet.runners, x, "1")  # the previous test moved production back to 1
    with httpx.Client(base_url=fleet.server.url, headers=ADMIN, timeout=30) as admin:
        r = admin.post("/api/v1/rollouts", json={
            "model": "digits", "candidate": 2, "strategy": "canary", "guards": [],
            "steps": [{"percent": 100, "bake_s": 3600, "timeout_s": 7200}]})
        assert r.status_code == 201, r.text
        rollout = r.json()["id"]
        try:
            for body in _wait_version(fleet.runners, x, "2"):  # every caller is in the canary
                assert body["parameters"] == {"alias": "candidate"}
            # a named version bypasses the rollout
            named = httpx.post(f"{fleet.runners[0].url}/v2/models/digits/versions/1/infer",
                               headers=APP, json=v2.request_from_array(x).model_dump(
                                   exclude_none=True))
            assert named.json()["model_version"] == "1"
        finally:
            r = admin.post(f"/api/v1/rollouts/{rollout}/abort", json={"reason": "test over"})
            assert r.status_code == 200, r.text
        for body in _wait_version(fleet.runners, x, "1"):  # aborted: back on the baseline
            assert body["parameters"] == {"alias": "production"}


SHADOWED = "edgefleet_runner_shadow_requests_total"


def _shadowed(runner: Proc, outcome: str) -> float:
    """How many shadow-sampled requests ``runner`` counted with ``outcome``."""
    return total(scrape(f"{runner.url}/metrics"), SHADOWED, outcome=outcome)


def _logged(admin: httpx.Client, request_id: str, wait_s: float = 30.0
            ) -> list[dict[str, Any]]:
    """The server's inference-log records of ``request_id`` (waits up to ``wait_s`` for any)."""
    deadline = time.monotonic() + wait_s
    while True:
        items: list[dict[str, Any]] = admin.get("/api/v1/inferences", params={
            "model": "digits", "request_id": request_id}).json()["items"]
        if items or time.monotonic() > deadline:
            return items
        time.sleep(0.2)


def _until_counted(runner: Proc, outcome: str, headers: dict[str, str],
                   x: np.ndarray) -> httpx.Response:
    """Requests to ``runner`` until it counts one shadow-sampled request with ``outcome`` (it
    sees the rollout within its refresh bound); the last answer, production's each time."""
    body = v2.request_from_array(x).model_dump(exclude_none=True)
    deadline = time.monotonic() + REFRESH_S + POLL_ALLOWANCE_S + 30
    while True:
        answer = httpx.post(f"{runner.url}/v2/models/digits/infer", json=body,
                            headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "1"  # the primary, whoever answered
        if _shadowed(runner, outcome) >= 1:
            return answer
        assert time.monotonic() < deadline, f"{runner.name}: no {outcome!r} shadow request"
        time.sleep(0.1)


@pytest.fixture
def shadow_rollout(fleet: Fleet, digits_data: Dataset) -> Iterator[int]:
    """A shadow rollout of version 2 sampling every request (rate 1), aborted afterwards."""
    _wait_version(fleet.runners, digits_data.x_test[:4], "1")
    with httpx.Client(base_url=fleet.server.url, headers=ADMIN, timeout=30) as admin:
        r = admin.post("/api/v1/rollouts", json={
            "model": "digits", "candidate": 2, "strategy": "shadow", "shadow_rate": 1.0,
            "guards": [], "approval": True,
            "steps": [{"bake_s": 3600, "timeout_s": 7200}]})
        assert r.status_code == 201, r.text
        rollout = int(r.json()["id"])
        try:
            yield rollout
        finally:
            r = admin.post(f"/api/v1/rollouts/{rollout}/abort", json={"reason": "test over"})
            assert r.status_code == 200, r.text


def _extra_runner(fleet: Fleet, name: str, **env: str) -> Proc:
    return start_runner(fleet.root, fleet.server.url, name=name, env={
        "EDGEFLEET_RUNNER_REFRESH_INTERVAL_S": str(REFRESH_S),
        "EDGEFLEET_RUNNER_SIGNING_PUBLIC_KEYS": fleet.public_key,
        "EDGEFLEET_RUNNER_DRAIN_S": "0", **env})


def test_shadow_sampled_requests_are_answered_and_logged_by_the_server(
        fleet: Fleet, digits_data: Dataset, shadow_rollout: int) -> None:
    """Every request the rollout samples goes from the runner to the server: the caller gets
    production's answer, and the server's inference log holds both answers under the runner's
    request id and the caller's key."""
    x = digits_data.x_test[:4]
    reference = _probs(_infer(fleet.server.url, x), len(x))
    with httpx.Client(base_url=fleet.server.url, headers=ADMIN, timeout=30) as admin:
        for runner in fleet.runners:
            _until_counted(runner, "forwarded", APP, x)
            request_id = f"shadow-via-{runner.name}"
            answer = _until_counted(runner, "forwarded", {**APP, "X-Request-ID": request_id}, x)
            assert answer.json()["parameters"] == {"alias": "production"}
            assert answer.headers["x-request-id"] == request_id
            np.testing.assert_allclose(_probs(answer, len(x)), reference, atol=1e-6)
            records = _logged(admin, request_id)
            assert {(r["version"], r["variant"], r["caller"], r["status"])
                    for r in records} == {(1, "baseline", "app:apps", 200)}
            assert sorted(int(r["row_index"]) for r in records) == list(range(len(x)))
            shadows = _logged(admin, f"{request_id}:shadow")
            assert {(r["version"], r["variant"]) for r in shadows} == {(2, "shadow")}
            assert len(shadows) == len(x)


def test_a_caller_the_server_does_not_know_is_answered_by_the_runner(
        fleet: Fleet, digits_data: Dataset, shadow_rollout: int) -> None:
    """A key the runner accepts and the server refuses (401): the runner answers with
    production itself (``fallback``); the server logs nothing of that caller."""
    x = digits_data.x_test[:4]
    reference = _probs(_infer(fleet.server.url, x), len(x))
    stranger = _extra_runner(fleet, "runner-stranger", EDGEFLEET_RUNNER_INFERENCE_KEYS=(
        f"{APP_KEY},strangers:stranger-secret-22"))
    try:
        answer = _until_counted(stranger, "fallback",
                                {"Authorization": "Bearer stranger-secret-22"}, x)
        np.testing.assert_allclose(_probs(answer, len(x)), reference, atol=1e-6)
        assert _shadowed(stranger, "forwarded") == 0
        with httpx.Client(base_url=fleet.server.url, headers=ADMIN, timeout=30) as admin:
            assert admin.get("/api/v1/inferences", params={
                "model": "digits", "caller": "app:strangers"}).json()["items"] == []
    finally:
        stranger.stop()


def test_with_forwarding_off_a_runner_answers_without_the_shadow(
        fleet: Fleet, digits_data: Dataset, shadow_rollout: int) -> None:
    """``forward_shadow`` off: the runner answers a sampled request with production, and the
    server never sees it."""
    x = digits_data.x_test[:4]
    local = _extra_runner(fleet, "runner-local", EDGEFLEET_RUNNER_FORWARD_SHADOW="false")
    try:
        _until_counted(local, "off", {**APP, "X-Request-ID": "shadow-kept-local"}, x)
        assert _shadowed(local, "forwarded") == 0
        with httpx.Client(base_url=fleet.server.url, headers=ADMIN, timeout=30) as admin:
            assert _logged(admin, "shadow-kept-local", wait_s=0) == []  # never sent on
    finally:
        local.stop()


def test_after_the_shadow_rollout_nothing_is_forwarded(fleet: Fleet,
                                                      digits_data: Dataset) -> None:
    """The previous tests aborted their rollouts: once a runner sees that, no request is
    sampled, so none is forwarded."""
    x = digits_data.x_test[:4]
    for runner in fleet.runners:
        deadline = time.monotonic() + REFRESH_S + POLL_ALLOWANCE_S + 30
        while True:
            before = _shadowed(runner, "forwarded")
            assert _infer(runner.url, x).json()["model_version"] == "1"
            if _shadowed(runner, "forwarded") == before:
                break
            assert time.monotonic() < deadline, f"{runner.name} still forwards after the abort"
            time.sleep(0.1)


@pytest.mark.parametrize("mode", ["flip", "forge"])
def test_a_tampered_download_is_refused(fleet: Fleet, digits_data: Dataset, mode: str) -> None:
    x = digits_data.x_test[:4]
    name = f"runner-{mode}"
    with TamperingProxy(fleet.server.url, mode) as proxy:
        runner = start_runner(fleet.root, proxy.url, name=name, env={
            "EDGEFLEET_RUNNER_SIGNING_PUBLIC_KEYS": fleet.public_key,
            "EDGEFLEET_RUNNER_DRAIN_S": "0"})
        try:
            refused = _infer(runner.url, x)
            assert refused.status_code == 503, refused.text
            assert "refused" in refused.json()["error"]
            if mode == "forge":  # the digests matched; the signature did not
                assert "signature" in refused.json()["error"]
            else:
                assert proxy.tampered >= 1 and "sha256" in refused.json()["error"]
            kept = {f.name for f in (fleet.root / f"{name}-cache").iterdir()}
            assert kept <= _digests(fleet), kept  # nothing tampered, no partial file, is kept
            proxy.mode = "honest"
            if mode == "flip":  # the same version loads once the downloads are intact
                assert _infer(runner.url, x).status_code == 200
        finally:
            runner.stop()


def _digests(fleet: Fleet) -> set[str]:
    with httpx.Client(base_url=fleet.server.url, headers=ADMIN) as admin:
        out = set()
        for n in (1, 2):
            info = admin.get(f"/api/v1/models/digits/versions/{n}").json()
            out |= {info[k]["sha256"] for k in ("plan", "weights", "manifest")}
        return out


def test_runners_hold_no_database_connection(fleet: Fleet) -> None:
    server_peers = {port for _, port in socket_peers(fleet.server.popen.pid)}
    assert POSTGRES_PORT in server_peers  # the check sees the server's own connections
    for runner in fleet.runners:
        peers = {port for _, port in socket_peers(runner.popen.pid)}
        assert POSTGRES_PORT not in peers, peers
        files = open_files(runner.popen.pid)
        assert not [f for f in files if f.endswith((".db", ".sqlite", ".sqlite3"))], files


class Load:
    """Four clients sending requests through the balancer until stopped; a request that raised
    counts as failed (status 0). Each request opens its own connection to the balancer: what is
    under test is the balancer's side (runners added and removed), not the race of a client's
    idle keep-alive connection with nginx closing it at a configuration reload."""

    def __init__(self, url: str, x: np.ndarray) -> None:
        self.url, self.x = url, x
        self.statuses: list[int] = []
        self.versions: set[str] = set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(4)]

    def _run(self) -> None:
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(headers=APP, timeout=30, limits=fresh) as client:
            while not self.stop.is_set():
                try:
                    r = _infer(self.url, self.x, client)
                    status = r.status_code
                    if status == 200:
                        self.versions.add(r.json()["model_version"])
                except Exception:  # any failure of a request counts as one
                    status = 0
                self.statuses.append(status)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def more(self, n: int) -> int:
        """Wait until ``n`` more requests were answered (at most 30 s); how many were."""
        before = len(self.statuses)
        deadline = time.monotonic() + 30
        while len(self.statuses) < before + n and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.statuses) - before

    def failed(self) -> list[int]:
        return [s for s in self.statuses if s != 200]


def _answered(runner: Proc) -> float:
    text = httpx.get(f"{runner.url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgefleet_runner_inference_requests_total{"))


def test_a_runner_added_under_load_fails_no_request(fleet: Fleet, digits_data: Dataset) -> None:
    env = {"EDGEFLEET_RUNNER_MODELS": "digits",
           "EDGEFLEET_RUNNER_SIGNING_PUBLIC_KEYS": fleet.public_key}
    added = start_runner(fleet.root, fleet.server.url, name="runner-3", env=env)
    fleet.procs.append(added)
    fleet.runners.append(added)
    with Load(fleet.balancer.url, digits_data.x_test[:2]) as load:
        assert load.more(20) >= 20
        reload_balancer(fleet.balancer, [r.url.removeprefix("http://") for r in fleet.runners])
        assert load.more(100) >= 100
    assert not load.failed(), f"{len(load.failed())} of {len(load.statuses)} requests failed"
    assert _answered(added) > 0  # the new runner took part


def _ready_answer(runner: Proc) -> tuple[int, object]:
    """The first ``/v2/health/ready`` answer that is not 200 (the drain has begun)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = httpx.get(f"{runner.url}/v2/health/ready", timeout=5)
        if r.status_code != 200:
            return r.status_code, r.json()
        time.sleep(0.05)
    return 200, None


def test_a_runner_stopped_under_load_fails_no_request(fleet: Fleet, digits_data: Dataset
                                                      ) -> None:
    stopped = fleet.runners[0]
    with Load(fleet.balancer.url, digits_data.x_test[:2]) as load:
        assert load.more(20) >= 20
        stopped.terminate()  # SIGTERM: drain, then exit
        assert _ready_answer(stopped) == (503, {"ready": False, "draining": True})
        stopped.popen.wait(timeout=60)
        assert load.more(50) >= 50  # the other runners kept answering
    assert stopped.popen.returncode == 0, stopped.tail()
    assert "draining" in stopped.tail()
    assert not load.failed(), f"{len(load.failed())} of {len(load.statuses)} requests failed"
    assert load.versions == {"1"}
