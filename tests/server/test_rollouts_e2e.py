"""Rollouts end to end with real processes: ``edgefleet server run`` and ``edgefleet agent run``,
on SQLite and on PostgreSQL.

Four real agents hold labelled digits examples (fed over their local ``POST /v1/labels``) and
report their active version's local accuracy in telemetry; the server's controller ticks every
0.5 s and decides on that evidence only. Versions: v1 (trained, production), v2 and v4 (v1's
weights slightly perturbed: as good), v3 (v1's weights scrambled: near chance). The scenario:

1. a canary of v2 in two steps is promoted and every device ends on v2;
2. a canary of v3 is rolled back at once, its timeline names ``device_accuracy``, and no device
   is left on v3;
3. a rollout whose guard asks for more evidence than the fleet can give waits (never passes)
   until its timeout, then rolls back;
4. a rollout of v4 with approval: the server is killed mid-step and restarted on the same
   database; the rollout resumes where it was, then waits for approval (production stays v2)
   until ``edgefleet rollout approve`` (a real CLI process) promotes v4 everywhere;
5. an A/B split of production and v2 reports per-variant accuracy and its z-test, then waits
   for an operator, who keeps the control;
6. a blue-green switch to v2 and back (abort) under concurrent V2 requests: no request fails
   and every response carries the outputs of the version it names;
7. over REST, a 50 % canary keeps each caller (inference key) on one version, both versions
   among 20 callers; a shadow's answers are logged (``variant=shadow``) and never returned;
8. rolling waves by device label: ``site=a`` first (only those two devices switch), then all;
9. blue-green on the devices: every agent pre-downloads and smoke-tests the candidate (its
   ``prefetched`` event) before the one switch of ``production``, then it is promoted;
10. a shadow on the devices: each agent runs the candidate beside its active version on local
    traffic and reports agreement; the guard passes on it, and no device served the shadow.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet.datasets import Dataset
from edgefleet.plan import weights_from_bytes, weights_to_bytes
from registry.db import make_engine, session_scope
from registry.version_evidence import version_evidence
from tests.registry.support import PlanFiles
from tests.registry.test_rollouts import mixed_salt
from tests.server.processes import (
    ADMIN,
    ADMIN_SECRET,
    CLI,
    QUIET,
    Proc,
    enroll,
    free_port,
    publish,
    server_env,
    set_alias,
    spawn,
    start_agent,
    wait_http,
)

N_AGENTS = 4
APPS = [f"app{i}" for i in range(20)]
TICK = {"EDGEFLEET_SERVER_ROLLOUT_TICK_S": "0.5",
        "EDGEFLEET_SERVER_INFERENCE_KEYS": ",".join(f"{a}:secret-{a}" for a in APPS)}
GUARDS = [{"kind": "device_accuracy", "margin": 0.05, "min_samples": 100},
          {"kind": "device_failures", "margin": 0, "min_samples": 1}]


def run_server(root: Path, db_url: str, port: int, name: str) -> Proc:
    proc = spawn(name, [*CLI, "server", "run", "--host", "127.0.0.1", "--port", str(port)],
                 root, {**server_env(root, db_url), **TICK})
    proc.url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, f"{proc.url}/api/v1/health/ready", timeout=90)
    except Exception:
        proc.stop()
        raise
    return proc


def until(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def scrambled(files: PlanFiles) -> bytes:
    rng = np.random.default_rng(7)
    arrays = weights_from_bytes(files.weights, manifest=files.manifest_obj)
    return weights_to_bytes({k: rng.permutation(v.ravel()).reshape(v.shape).astype(v.dtype)
                             for k, v in arrays.items()},
                            plan_sha256=files.manifest_obj.plan_sha256)


class Stack:
    def __init__(self, root: Path, db_url: str, server: Proc, agents: list[Proc]) -> None:
        self.root, self.db_url, self.server, self.agents = root, db_url, server, agents
        self.http = httpx.Client(base_url=server.url, headers=ADMIN, timeout=30)

    def rollout(self, body: dict[str, Any]) -> int:
        r = self.http.post("/api/v1/rollouts", json={"model": "digits", **body})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def info(self, rid: int) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/rollouts/{rid}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def timeline(self, rid: int) -> list[dict[str, Any]]:
        return list(self.http.get(f"/api/v1/rollouts/{rid}/history").json())

    def running(self) -> dict[str, int | None]:
        items = self.http.get("/api/v1/devices", params={"model": "digits"}).json()["items"]
        return {d["id"]: d["running_version"] for d in items}

    def production(self) -> int:
        return int(self.http.get("/api/v1/models/digits/aliases/production").json()["version"])

    def ended(self, rid: int, state: str, timeout: float = 150.0) -> dict[str, Any]:
        info = until(f"rollout {rid} ends", lambda: (i := self.info(rid))["state"] not in
                     ("pending", "running", "awaiting_approval") and i, timeout)
        assert info["state"] == state, (info, self.timeline(rid))
        return dict(info)

    def everyone_on(self, version: int) -> None:
        until(f"every device runs v{version}",
              lambda: set(self.running().values()) == {version} or self.running(), 90)


#: The whole stack on the embedded database: the rollout tables, the state machine and the
#: controller's restart path run on both backends in tests/registry/test_rollouts.py and
#: tests/server/test_rollouts_api.py; here the processes are what is under test.
@pytest.fixture(scope="module", params=["sqlite"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          plan_files: PlanFiles, digits_plan_dir: Path, digits_data: Dataset) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("rollouts-e2e")
    db_url = (f"sqlite:///{root / 'server.db'}" if request.param == "sqlite"
              else request.getfixturevalue("postgres").create("rollouts_"))
    server = run_server(root, db_url, free_port(), "server")
    agents: list[Proc] = []
    st: Stack | None = None
    try:
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as admin:
            assert publish(admin, "digits", digits_plan_dir) == 1
            set_alias(admin, "digits", "production", 1)
            for i, weights in enumerate((plan_files.perturbed_weights(1, 0.002),
                                         scrambled(plan_files),
                                         plan_files.perturbed_weights(2, 0.002))):
                w = root / f"weights-{i + 2}.safetensors"
                w.write_bytes(weights)
                assert publish(admin, "digits", digits_plan_dir, weights=w, plan_from=1) == i + 2
        ids = [f"pi-{i}" for i in range(N_AGENTS)]
        for device_id in ids:
            enroll(server.url, root / device_id, device_id, model="digits")
        engine = make_engine(db_url)
        with session_scope(engine, write=True) as s:
            mixed_salt(s, ids)  # half of the fleet under a 50 % canary, whatever the salt
        engine.dispose()
        for device_id in ids:
            agents.append(start_agent(root, root / device_id, name=device_id))
        st = Stack(root, db_url, server, agents)
        st.everyone_on(1)
        x, y = digits_data.x_test, digits_data.y_test
        for i, agent in enumerate(agents):  # 150 labelled examples each
            rows = np.arange(i * 60, i * 60 + 150) % len(y)
            r = httpx.post(f"{agent.url}/v1/labels", json={"inputs": x[rows].tolist(),
                                                           "labels": y[rows].tolist()},
                           timeout=30)
            assert r.status_code == 201, r.text
        yield st
    finally:
        for p in agents:
            p.stop()
        if st is not None:
            st.http.close()
            st.server.stop()  # the restarted one, when a test restarted it
        server.stop()


def test_good_promoted_bad_rolled_back_thin_evidence_waits(stack: Stack) -> None:
    time.sleep(3)  # a few windows of v1's local accuracy: the baseline's evidence
    rid = stack.rollout({"candidate": 2, "guards": GUARDS, "steps": [
        {"percent": 50, "bake_s": 3, "timeout_s": 120},
        {"percent": 100, "bake_s": 3, "timeout_s": 120}]})
    info = stack.ended(rid, "promoted")
    assert info["step"] == 2
    kinds = [e["kind"] for e in stack.timeline(rid)]
    assert kinds[0] == "start" and kinds[-1] == "promote"
    assert kinds.count("step") == 2 and kinds.count("pass") == 2
    passes = [e for e in stack.timeline(rid) if e["kind"] == "pass"]
    for e in passes:  # the evidence behind each step: the candidate's labelled accuracy
        acc = next(g for g in e["evidence"]["guards"] if g["kind"] == "device_accuracy")
        assert acc["decision"] == "pass" and acc["candidate_n"] >= 100
    assert stack.production() == 2
    stack.everyone_on(2)

    rid = stack.rollout({"candidate": 3, "guards": GUARDS, "steps": [
        {"percent": 50, "bake_s": 30, "timeout_s": 120}, {"percent": 100}]})
    stack.ended(rid, "rolled_back")
    last = stack.timeline(rid)[-1]
    assert last["kind"] == "rollback" and "device_accuracy" in last["message"]
    acc = next(g for g in last["evidence"]["guards"] if g["kind"] == "device_accuracy")
    assert acc["decision"] == "fail" and acc["candidate"] < acc["baseline"] - 0.05
    assert stack.production() == 2
    stack.everyone_on(2)  # no device left on v3
    history = stack.http.get("/api/v1/models/digits/aliases/canary/history").json()["items"]
    assert all(f"rollout {rid}" in e["reason"] for e in history[:2])

    rid = stack.rollout({"candidate": 4, "steps": [{"percent": 50, "bake_s": 0,
                                                    "timeout_s": 12}], "guards": [
        {"kind": "device_accuracy", "margin": 0.05, "min_samples": 1_000_000}]})
    seen = set()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:  # well before the timeout: waiting, never passing
        info = stack.info(rid)
        assert info["state"] == "running", info
        seen.add((info.get("last_decision") or {}).get("verdict"))
        time.sleep(0.5)
    assert seen >= {"wait"} and "pass" not in seen
    stack.ended(rid, "rolled_back", timeout=60)
    last = stack.timeline(rid)[-1]
    assert "timeout" in last["message"] and "too little data" in last["message"]
    assert stack.production() == 2


def test_restart_mid_rollout_resumes_and_approval_blocks(stack: Stack) -> None:
    rid = stack.rollout({"candidate": 4, "guards": GUARDS, "approval": True, "steps": [
        {"percent": 50, "bake_s": 20, "timeout_s": 300},
        {"percent": 100, "bake_s": 2, "timeout_s": 300}]})
    until("a decision in step 1", lambda: stack.info(rid).get("last_decision"), 60)
    before = stack.info(rid)
    assert before["state"] == "running" and before["step"] == 0
    port = int(stack.server.url.rsplit(":", 1)[1])
    stack.server.stop()  # SIGTERM mid-step
    stack.server = run_server(stack.root, stack.db_url, port, "server-restarted")
    until("the restarted controller resumes", lambda: "resume" in
          [e["kind"] for e in stack.timeline(rid)], 30)
    events = stack.timeline(rid)
    resume = next(i for i, e in enumerate(events) if e["kind"] == "resume")
    assert events[resume]["step"] == 0 and events[resume]["from_state"] == "running"
    assert [e["kind"] for e in events[:resume]].count("step") == 1  # nothing restarted
    until("step 1 passes", lambda: any(e["kind"] == "pass" for e in stack.timeline(rid)), 90)
    passed = next(e for e in stack.timeline(rid) if e["kind"] == "pass")
    assert passed["step"] == 0
    # the bake counted from the step's stored start, across the restart
    assert passed["evidence"]["elapsed_s"] >= 20
    assert stack.info(rid)["created_at"] == before["created_at"]
    info = until("awaiting approval", lambda: (i := stack.info(rid))["state"] != "running" and i,
                 150)
    assert info["state"] == "awaiting_approval" and info["awaiting"] == "promotion", \
        stack.timeline(rid)
    time.sleep(3)  # ticks go by: approval still blocks the promotion
    assert stack.info(rid)["state"] == "awaiting_approval"
    assert stack.production() == 2
    out = subprocess.run([*CLI, "rollout", "approve", str(rid), "--reason", "looks good",
                          "--url", stack.server.url], capture_output=True, text=True,
                         timeout=60, check=False,
                         env={**os.environ, **QUIET, "EDGEFLEET_ADMIN_KEY": ADMIN_SECRET})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "promoted" in out.stdout
    assert stack.production() == 4
    stack.everyone_on(4)
    out = subprocess.run([*CLI, "rollout", "history", str(rid), "--json", "--url",
                          stack.server.url], capture_output=True, text=True, timeout=60,
                         check=False, env={**os.environ, **QUIET,
                                           "EDGEFLEET_ADMIN_KEY": ADMIN_SECRET})
    kinds = [e["kind"] for e in json.loads(out.stdout)]
    assert kinds[-2:] == ["approve", "promote"] and "resume" in kinds


def test_ab_reports_per_variant_metrics_and_its_test(stack: Stack) -> None:
    production = stack.production()
    rid = stack.rollout({"strategy": "ab", "horizon_s": 4, "min_samples": 200,
                         "auto_promote": False,
                         "variants": [{"name": "control", "version": production},
                                      {"name": "new", "version": 2}]})
    info = until("the A/B test ran", lambda: (i := stack.info(rid))["state"] != "running" and i,
                 150)
    assert info["state"] == "awaiting_approval" and info["awaiting"] == "promotion", \
        stack.timeline(rid)
    ab = info["last_decision"]["ab"]
    assert ab["sufficient"] and "two-proportion z-test" in ab["test"]
    assert ab["min_samples"] == 200 and ab["alpha"] == 0.05
    arms = {a["name"]: a for a in ab["arms"]}
    assert set(arms) == {"control", "new"}
    assert all(a["n"] >= 200 and 0.5 < a["accuracy"] <= 1 for a in arms.values())
    (cmp,) = ab["comparisons"]
    assert cmp["control"] == "control" and cmp["variant"] == "new" and 0 <= cmp["p_value"] <= 1
    assert "ab_result" in [e["kind"] for e in stack.timeline(rid)]
    r = stack.http.post(f"/api/v1/rollouts/{rid}/approve", json={"variant": "control"})
    assert r.status_code == 200 and r.json()["state"] == "promoted", r.text
    assert stack.production() == production
    stack.everyone_on(production)


def test_blue_green_switch_under_rest_load_fails_nothing_and_never_mixes(
        stack: Stack, digits_data: Dataset) -> None:
    """Concurrent V2 requests through a blue-green switch to v2 and its switch back (abort).

    Every request must succeed, and every response naming a version must carry exactly that
    version's outputs for the (fixed) input: one answer per version, and the two differ.
    """
    import threading

    from edgefleet.v2 import request_from_array

    body = request_from_array(digits_data.x_test[:8]).model_dump(mode="json", exclude_none=True)
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=stack.server.url, headers=ADMIN, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/v2/models/digits/infer", json=body)
                answers.append((r.status_code, r.text))

    production = stack.production()
    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        rid = stack.rollout({"candidate": 2, "strategy": "blue_green", "prefetch_devices": 0,
                             "guards": [], "steps": [{"bake_s": 1, "timeout_s": 60},
                                                     {"bake_s": 0, "timeout_s": 600}]})
        until("the switch", lambda: stack.production() == 2, 60)
        time.sleep(3)
        r = stack.http.post(f"/api/v1/rollouts/{rid}/abort", json={"reason": "switch back"})
        assert r.status_code == 200 and r.json()["state"] == "aborted", r.text
        assert stack.production() == production
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert answers and all(status == 200 for status, _ in answers), \
        [a for a in answers if a[0] != 200][:3]
    outputs: dict[str, set[str]] = {}
    for _, text in answers:
        doc = json.loads(text)
        outputs.setdefault(doc["model_version"], set()).add(json.dumps(doc["outputs"]))
    assert set(outputs) == {"2", str(production)}, outputs.keys()
    assert all(len(v) == 1 for v in outputs.values())  # one answer per version: no mix
    assert outputs["2"] != outputs[str(production)]
    kinds = [e["kind"] for e in stack.timeline(rid)]
    assert kinds[:2] == ["start", "step"] and "pass" in kinds and kinds[-1] == "abort"


def test_rest_canary_is_sticky_per_caller_and_shadow_answers_are_never_returned(
        stack: Stack, digits_data: Dataset) -> None:
    from edgefleet.v2 import request_from_array

    body = request_from_array(digits_data.x_test[:4]).model_dump(mode="json", exclude_none=True)
    production = stack.production()
    rid = stack.rollout({"candidate": 2, "guards": GUARDS,
                         "steps": [{"percent": 50, "bake_s": 600, "timeout_s": 900}]})
    time.sleep(1.5)  # the serving table's refresh (0.25 s) and one controller tick

    def infer(app: str) -> dict[str, Any]:
        r = httpx.post(f"{stack.server.url}/v2/models/digits/infer", json=body, timeout=30,
                       headers={"Authorization": f"Bearer secret-{app}"})
        assert r.status_code == 200, r.text
        return dict(r.json())

    seen = {app: {infer(app)["model_version"] for _ in range(3)} for app in APPS}
    assert all(len(v) == 1 for v in seen.values()), seen  # sticky per caller
    versions = {next(iter(v)) for v in seen.values()}
    assert versions == {"2", str(production)}, seen  # both arms among 20 callers
    assert stack.http.post(f"/api/v1/rollouts/{rid}/abort", json={}).status_code == 200

    rid = stack.rollout({"candidate": 2, "strategy": "shadow", "shadow_rate": 0.5,
                         "horizon_s": 600})
    time.sleep(1.5)
    started = datetime.now(UTC)
    answered = [infer("app0")["model_version"] for _ in range(40)]
    assert set(answered) == {str(production)}  # production answers, always
    time.sleep(2)  # the inference log's writer
    shadows = until("shadow answers logged", lambda: stack.http.get(
        "/api/v1/inferences", params={"model": "digits", "variant": "shadow",
                                      "limit": 500}).json()["items"], 30)
    assert {r["version"] for r in shadows} == {2}
    assert 5 <= len({r["request_id"] for r in shadows}) <= 35  # about half of 40, sampled
    until("REST shadow compared with production",
          lambda: rest_shadow_matches_log(stack, started), 30)
    assert stack.http.post(f"/api/v1/rollouts/{rid}/abort", json={}).status_code == 200


def rest_shadow_matches_log(stack: Stack, since: datetime) -> bool:
    """Whether version_evidence's REST shadow pairs equal the ones read off the log's listing
    (each ``<id>:shadow`` answer with production's ``<id>`` answer of the same row)."""
    items = stack.http.get("/api/v1/inferences", params={
        "model": "digits", "since": since.isoformat(), "limit": 500}).json()["items"]
    answers = {(r["request_id"], r["row_index"]): r["label"] for r in items
               if r["variant"] != "shadow" and r["status"] < 400}
    pairs = [(r["label"], answers[(r["request_id"].removesuffix(":shadow"), r["row_index"])])
             for r in items if r["variant"] == "shadow" and r["status"] < 400
             and (r["request_id"].removesuffix(":shadow"), r["row_index"]) in answers]
    engine = make_engine(stack.db_url)
    try:
        with session_scope(engine) as session:
            ev = version_evidence(session, model="digits", version=2, since=since)
    finally:
        engine.dispose()
    agree = sum(shadow == production for shadow, production in pairs)
    return len(pairs) >= 5 and (ev.rest_shadow_n, ev.rest_shadow_agree) == (len(pairs), agree)


def test_rolling_waves_follow_device_labels(stack: Stack) -> None:
    sites = {"pi-0": "a", "pi-1": "a", "pi-2": "b", "pi-3": "b"}
    for device_id, site in sites.items():
        r = stack.http.patch(f"/api/v1/devices/{device_id}", json={"labels": {"site": site}})
        assert r.status_code == 200, r.text
    rid = stack.rollout({"candidate": 2, "strategy": "waves", "guards": GUARDS, "steps": [
        {"labels": {"site": "a"}, "bake_s": 4, "timeout_s": 120},
        {"bake_s": 2, "timeout_s": 120}]})
    until("wave 1 on the candidate", lambda: (r := stack.running()) and
          {d for d, v in r.items() if v == 2} == {"pi-0", "pi-1"}, 60)
    assert stack.info(rid)["step"] == 0
    assert {stack.running()[d] for d in ("pi-2", "pi-3")} == {stack.production()}
    stack.ended(rid, "promoted")
    stack.everyone_on(2)
    kinds = [e["kind"] for e in stack.timeline(rid)]
    assert kinds.count("pass") == 2 and kinds[-1] == "promote"


def test_blue_green_devices_pre_download_before_the_switch(stack: Stack) -> None:
    baseline = stack.production()
    candidate = 4 if baseline != 4 else 2
    rid = stack.rollout({"candidate": candidate, "strategy": "blue_green",
                         "prefetch_devices": N_AGENTS, "guards": GUARDS,
                         "steps": [{"bake_s": 0, "timeout_s": 120},
                                   {"bake_s": 3, "timeout_s": 120}]})
    info = until("the switch", lambda: (i := stack.info(rid))["step"] == 1 and i, 120)
    assert info["state"] in ("running", "promoted")
    passed = next(e for e in stack.timeline(rid) if e["kind"] == "pass")
    (prefetch,) = passed["evidence"]["guards"]
    assert prefetch["kind"] == "prefetch" and prefetch["candidate_n"] >= N_AGENTS
    kinds = [e["kind"] for e in stack.timeline(rid)]
    assert kinds[:4] == ["start", "step", "wait", "pass"] or kinds[:3] == ["start", "step", "pass"]
    stack.ended(rid, "promoted")
    stack.everyone_on(candidate)
    assert stack.production() == candidate


def test_device_shadow_reports_agreement_and_is_never_served(
        stack: Stack, digits_data: Dataset) -> None:
    from edgefleet.v2 import request_from_array

    production = stack.production()
    candidate = 2 if production != 2 else 4
    rid = stack.rollout({"candidate": candidate, "strategy": "shadow", "horizon_s": 3,
                         "approval": True, "guards": [
                             {"kind": "shadow_agreement", "margin": 0.2, "min_samples": 100}]})
    body = request_from_array(digits_data.x_test[:25]).model_dump(mode="json",
                                                                  exclude_none=True)
    served: set[str] = set()
    deadline = time.monotonic() + 120
    while stack.info(rid)["state"] == "running" and time.monotonic() < deadline:
        for agent in stack.agents:  # local traffic: the shadow runs beside each answer
            r = httpx.post(f"{agent.url}/v2/models/digits/infer", json=body, timeout=30)
            assert r.status_code == 200, r.text
            served.add(str(r.json().get("model_version")))
        time.sleep(1)
    info = stack.info(rid)
    assert info["state"] == "awaiting_approval", stack.timeline(rid)
    assert served == {str(production)}  # the devices never served the shadow
    (guard,) = next(e for e in stack.timeline(rid) if e["kind"] == "pass")["evidence"]["guards"]
    assert guard["kind"] == "shadow_agreement" and guard["decision"] == "pass"
    assert guard["candidate_n"] >= 100 and guard["candidate"] >= 0.8
    r = stack.http.post(f"/api/v1/rollouts/{rid}/abort", json={"reason": "evaluation only"})
    assert r.status_code == 200 and stack.production() == production
