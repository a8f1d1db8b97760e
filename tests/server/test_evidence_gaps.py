"""Device events in telemetry, the guards' evidence, the monitor's rollups, promote/rollback.

On both backends: device events are stored once with their report and refused (with the whole
report) when they name another model or an unknown version; :func:`version_evidence` equals the
figures computed by hand from what was posted; the monitor answered from rollups equals a
brute-force computation also for windows that cut rollup buckets, per variant, after feedback
(a correction too) and a batch written twice; the CLI promotes and rolls back over REST.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from registry import rollups
from registry.evidence import apply_feedback, insert_records, latency_bucket
from registry.models import FeedbackItem, InferenceRecord
from registry.models.evidence import InferenceRollup, PredictionRollup
from registry.version_evidence import version_evidence
from server.evidence.monitor import QUANTILES, monitor, split
from tests.server.support import ADMIN, Api
from tests.server.test_evidence import brute_force

NOW = datetime.now(UTC).replace(microsecond=0)


def report(key: str, version: int = 1, events: list[dict[str, Any]] | None = None,
           **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "idempotency_key": key, "model": "digits", "version": version,
        "window_start": (NOW - timedelta(minutes=5)).isoformat(),
        "window_end": NOW.isoformat(),
        "inference": {"local": 40, "fallback": 2, "errors": 1},
        "local_eval": {"n_examples": 30, "accuracy": 0.9},
        "events": events or [],
    }
    body.update(kw)
    return body


def event(kind: str, version: int, **kw: Any) -> dict[str, Any]:
    return {"kind": kind, "at": NOW.isoformat(), "model": "digits", "version": version, **kw}


@pytest.fixture
def two_versions(api: Api) -> Api:
    api.production()
    assert api.publish(metadata={"description": "candidate"}) == 2
    assert api.alias("canary", 2).status_code == 200
    return api


def events_of(client: TestClient, **query: Any) -> dict[str, Any]:
    r = client.get("/api/v1/telemetry/events", params=query, headers=ADMIN)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_device_events_are_stored_once_with_their_report(two_versions: Api,
                                                         client: TestClient) -> None:
    dev = two_versions.enrol("pi-1")
    url = "/api/v1/devices/pi-1/telemetry"
    body = report("k-events1", events=[
        event("switch", 2, from_version=1),
        event("crash", 2, count=3, detail="interpreter error"),
        event("rollback", 2, to_version=1, detail="failed 3 times"),
    ])
    assert client.post(url, json=body, headers=dev).status_code == 201
    assert client.post(url, json=body, headers=dev).status_code == 200  # the outbox's retry
    stored = events_of(client, model="digits", version=2)
    assert stored["total"] == 3
    assert {e["kind"]: e["count"] for e in stored["items"]} == {
        "switch": 1, "crash": 3, "rollback": 1}
    rollback = next(e for e in stored["items"] if e["kind"] == "rollback")
    assert (rollback["device_id"], rollback["to_version"]) == ("pi-1", 1)
    assert events_of(client, kind="crash")["total"] == 1
    assert events_of(client, model="digits", version=1)["total"] == 0


@pytest.mark.parametrize(("bad", "message"), [
    ({"model": "other"}, "about model 'other'"),
    ({"version": 9}, "versions [9]"),
    ({"to_version": 7}, "versions [7]"),
])
def test_events_naming_other_models_or_unknown_versions_refuse_the_report(
    two_versions: Api, client: TestClient, bad: dict[str, Any], message: str
) -> None:
    dev = two_versions.enrol("pi-1")
    r = client.post("/api/v1/devices/pi-1/telemetry",
                    json=report("k-bad-ev1", events=[{**event("rollback", 2), **bad}]),
                    headers=dev)
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert client.get("/api/v1/telemetry", headers=ADMIN).json()["total"] == 0
    assert events_of(client)["total"] == 0


def test_bad_event_bodies_and_queries_are_refused(two_versions: Api, client: TestClient) -> None:
    dev = two_versions.enrol("pi-1")
    url = "/api/v1/devices/pi-1/telemetry"
    for bad in ({"kind": "exploded"}, {"count": 0}, {"at": "1700000000"},
                {"detail": "x\x00y"}):
        r = client.post(url, json=report("k-bad-ev2", events=[{**event("crash", 1), **bad}]),
                        headers=dev)
        assert r.status_code == 422, (bad, r.text)
    for shadow in ({"version": 9, "n": 3, "agree": 1}, {"version": 1, "n": 3, "agree": 4}):
        r = client.post(url, json=report("k-bad-ev4", shadow=shadow), headers=dev)
        assert r.status_code == 422 and "shadow" in r.json()["detail"], r.text
    too_many = [event("crash", 1)] * 101
    assert client.post(url, json=report("k-bad-ev3", events=too_many),
                       headers=dev).status_code == 422
    assert client.get("/api/v1/telemetry/events", params={"kind": "nope"},
                      headers=ADMIN).status_code == 422
    assert client.get("/api/v1/telemetry/events", params={"version": 1},
                      headers=ADMIN).status_code == 422
    assert client.get("/api/v1/telemetry/events").status_code == 401


def test_version_evidence_adds_up_what_was_reported(two_versions: Api, client: TestClient,
                                                    engine: Engine) -> None:
    for device, accuracies in (("pi-1", (0.5, 0.8)), ("pi-2", (0.6,))):
        dev = two_versions.enrol(device)
        for i, accuracy in enumerate(accuracies):
            events = [event("switch", 2, from_version=1)] if i == 0 else []
            shadow = ({"version": 1, "n": 30, "agree": 27, "confidence_delta_sum": -1.5}
                      if device == "pi-2" else None)
            body = report(f"k-{device}-{i}", version=2, events=events, shadow=shadow,
                          local_eval={"n_examples": 50, "accuracy": accuracy},
                          window_end=(NOW - timedelta(seconds=10 - i)).isoformat())
            r = client.post(f"/api/v1/devices/{device}/telemetry", json=body, headers=dev)
            assert r.status_code == 201, r.text
    rows = [{
        "request_id": f"r-{i}", "row_index": 0, "created_at": NOW - timedelta(seconds=i),
        "model": "digits", "version": 2, "alias": "canary", "variant": "canary",
        "caller": "device:pi-1" if i % 2 else "app:shop", "status": 500 if i == 3 else 200,
        "latency_ms": float(i + 1), "latency_bucket": latency_bucket(float(i + 1)),
        "label": None if i == 3 else str(i % 3), "confidence": 0.5, "input_sha256": None,
        "inputs": None, "true_label": "0" if i < 3 else None,
    } for i in range(6)]
    with engine.begin() as conn:
        insert_records(conn, rows)
    since = NOW - timedelta(hours=1)
    with Session(engine) as session:
        ev = version_evidence(session, model="digits", version=2, since=since)
        mine = version_evidence(session, model="digits", version=2, since=since,
                                device_ids=["pi-1"])
        base = version_evidence(session, model="digits", version=1, since=since)
        later = version_evidence(session, model="digits", version=2,
                                 since=NOW + timedelta(seconds=1))
    assert (ev.requests, ev.errors, ev.error_rate) == (6, 1, 1 / 6)
    assert ev.latency_ms_p50 is not None and 3.0 <= ev.latency_ms_p50 <= 3.0 * 1.021
    assert ev.latency_ms_p99 is not None and 6.0 <= ev.latency_ms_p99 <= 6.0 * 1.021
    assert ev.predictions == {"0": 1, "1": 2, "2": 2}  # rows 0, 1, 2, 4, 5 (3 failed)
    assert (ev.feedback_labelled, ev.feedback_correct) == (3, 1)  # rows 0, 1, 2: only 0 right
    assert (ev.devices, ev.reports, ev.device_inferences, ev.fallbacks, ev.device_errors) == (
        2, 3, 126, 6, 3)
    assert (ev.device_labelled, ev.device_correct) == (100, 40 + 30)  # the latest of each
    assert ev.events == {"switch": 2, "smoke_failed": 0, "refused": 0, "crash": 0,
                         "rollback": 0, "prefetched": 0}
    assert (ev.shadow_n, ev.shadow_agree) == (0, 0)
    assert (base.shadow_n, base.shadow_agree, base.shadow_confidence_delta_sum) == (
        30, 27, pytest.approx(-1.5))  # pi-2 ran v1 as a shadow beside v2
    assert (mine.requests, mine.devices, mine.device_labelled, mine.events["switch"]) == (
        3, 1, 50, 1)
    assert (base.requests, base.devices, base.device_accuracy, base.error_rate) == (
        0, 0, None, None)
    assert (later.requests, later.devices, later.reports) == (0, 0, 0)
    assert ev.to_dict()["device_accuracy"] == pytest.approx(0.7)


# --- the monitor over rollups ----------------------------------------------------------------
def variant_rows(n: int, since: datetime, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        version = rng.choice([1, 2])
        status = 200 if rng.random() > 0.15 else 503
        latency = rng.lognormvariate(0, 1)
        created = since + timedelta(seconds=rng.uniform(-200, 5000))
        variant = rng.choice([None, "baseline", "candidate"])
        for j in range(rng.choice([1, 2]) if status == 200 else 1):
            label = str(rng.randrange(3)) if status == 200 else None
            rows.append({
                "request_id": f"v-{seed}-{i}", "row_index": j, "created_at": created,
                "model": "digits", "version": version, "alias": None, "variant": variant,
                "caller": "app:x", "status": status, "latency_ms": latency,
                "latency_bucket": latency_bucket(latency), "label": label, "confidence": 0.5,
                "input_sha256": None, "inputs": None,
                "true_label": str(rng.randrange(3)) if label and rng.random() < 0.3 else None,
            })
    return rows


def check_against_brute_force(engine: Engine, since: datetime, until: datetime,
                              window_s: int) -> None:
    with Session(engine) as session:
        stored = list(session.exec(select(InferenceRecord)).all())
        report = monitor(session, "digits", since, until, window_s=window_s)
    groups: list[tuple[Any, list[InferenceRecord], str | None]] = [(report.versions, stored, None)]
    for name in ("baseline", "candidate"):
        groups.append(([v for v in report.variants if v.variant == name],
                       [r for r in stored if r.variant == name], name))
    for got, rows, name in groups:
        expected = brute_force(rows, since, until, window_s)
        assert [v.version for v in got] == sorted(expected), name
        for v in got:
            e = expected[v.version]
            assert v.variant == name
            assert (v.requests, v.errors, v.labelled, v.correct) == (
                e["requests"], e["errors"], e["labelled"], e["correct"]), (name, v.version)
            assert v.latency_ms == {f"p{round(q * 100)}": e["latency"][q] for q in QUANTILES}
            assert v.predictions == e["predictions"]
            assert [(w.labelled, w.correct) for w in v.accuracy_windows] == e["windows"]


def test_monitor_from_rollups_equals_brute_force_on_any_window(two_versions: Api,
                                                               engine: Engine) -> None:
    since = datetime(2030, 1, 1, tzinfo=UTC)
    rows = variant_rows(1200, since, seed=3)
    with engine.begin() as conn:
        insert_records(conn, rows)
        insert_records(conn, rows[:300])  # a batch written twice counts once
    labelled = [r for r in rows if r["status"] == 200 and r["true_label"] is None][:200]
    with Session(engine) as session:
        apply_feedback(session, [FeedbackItem(request_id=r["request_id"],
                                              row_index=r["row_index"], label=r["label"])
                                 for r in labelled])
        corrected = [r for r in rows if r["true_label"] is not None][:50]
        apply_feedback(session, [FeedbackItem(request_id=r["request_id"],
                                              row_index=r["row_index"],
                                              label="0" if r["true_label"] != "0" else "1")
                                 for r in corrected])
        session.commit()
    cases = [
        (since, since + timedelta(seconds=4800), 1800),  # aligned: rollups only, except none
        (since + timedelta(seconds=17.5), since + timedelta(seconds=4000.25), 600),
        (since + timedelta(seconds=13), since + timedelta(seconds=3613), 450),  # cuts buckets
        (since + timedelta(seconds=5), since + timedelta(seconds=50), 60),  # inside one bucket
    ]
    for start, end, window_s in cases:
        check_against_brute_force(engine, start, end, window_s)
    with Session(engine) as session:
        counted = {(r.model, r.bucket_start, r.version, r.variant, r.label, r.answered,
                    r.labelled, r.correct) for r in session.exec(select(PredictionRollup))}
        requests = sum(r.requests for r in session.exec(select(InferenceRollup)))
    with engine.begin() as conn:
        assert rollups.rebuild(conn) == len(rows)
    with Session(engine) as session:
        rebuilt = {(r.model, r.bucket_start, r.version, r.variant, r.label, r.answered,
                    r.labelled, r.correct) for r in session.exec(select(PredictionRollup))}
        assert sum(r.requests for r in session.exec(select(InferenceRollup))) == requests
    assert rebuilt == counted  # increments (inserts, feedback, corrections) == recomputation


def test_split_covers_the_window_once() -> None:
    since = datetime(2030, 1, 1, 0, 0, 13, tzinfo=UTC)
    until = since + timedelta(seconds=3600)
    start, end, cut, raw = split(since, until, 450)
    assert start == datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    assert end == datetime(2030, 1, 1, 1, 0, tzinfo=UTC)
    assert raw[0] == (since, start) and raw[-1] == (end, until)
    assert len(cut) == 7 and all((c, c + timedelta(seconds=60)) in raw for c in cut)


# --- the CLI's promote and rollback ----------------------------------------------------------
def test_registry_cli_promotes_and_rolls_back(two_versions: Api, client: TestClient,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from edgefleet_cli import registry as cli
    from edgefleet_cli.main import app

    # the app over ASGI, not a socket; lent, not entered: each CLI call's ``with`` would
    # start the app's lifespan again and leave the fixture's own one never shut down
    monkeypatch.setattr(cli, "_client", lambda url: nullcontext(client))
    client.headers["X-Admin-Key"] = ADMIN["X-Admin-Key"]
    runner = CliRunner()
    out = runner.invoke(app, ["registry", "promote", "digits", "2", "--reason", "evidence ok"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[1].split()[:3] == ["digits", "production", "2"]
    history = client.get("/api/v1/models/digits/aliases/production/history",
                         headers=ADMIN).json()["items"]
    assert history[0]["reason"] == "evidence ok" and history[0]["to_version"] == 2
    out = runner.invoke(app, ["registry", "rollback", "digits", "--json"])
    assert out.exit_code == 0, out.output
    assert '"version": 1' in out.output
    out = runner.invoke(app, ["registry", "promote", "digits", "9"])
    assert out.exit_code == 1 and "error: 404" in out.output
    out = runner.invoke(app, ["registry", "events", "--model", "digits"])
    assert out.exit_code == 0 and out.output.splitlines()[0].split()[:3] == [
        "at", "device_id", "model"]
