"""The REST shadow compared with production, answer by answer, on SQLite and PostgreSQL.

Records are written as :mod:`server.inference.answer` logs them (production under ``<id>``,
the shadow under ``<id>:shadow`` with ``variant="shadow"``) through
:func:`registry.evidence.insert_records`; :func:`registry.version_evidence.version_evidence`
must pair each answered shadow instance with production's answered instance of the same
request and row, and leave out shadow runs that failed and shadows whose production record is
missing, failed or outside the pairing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.rollouts import GuardSpec
from registry.evidence import insert_records, latency_bucket
from registry.rollouts.guards import FAIL, PASS, evaluate, evidence_summary
from registry.version_evidence import SHADOW_VARIANT, version_evidence
from tests.server.support import Api

NOW = datetime.now(UTC).replace(microsecond=0)


def record(request_id: str, version: int, label: str | None, confidence: float | None, *,
           row: int = 0, status: int = 200, variant: str | None = "baseline",
           caller: str = "app:shop", ago_s: float = 10.0) -> dict[str, Any]:
    return {
        "request_id": request_id, "row_index": row, "created_at": NOW - timedelta(seconds=ago_s),
        "model": "digits", "version": version, "alias": "production", "variant": variant,
        "caller": caller, "status": status, "latency_ms": 2.0,
        "latency_bucket": latency_bucket(2.0), "label": label if status < 400 else None,
        "confidence": confidence if status < 400 else None, "input_sha256": None,
        "inputs": None, "true_label": None,
    }


def pair(request_id: str, prod: tuple[str, float], shadow: tuple[str, float],
         **kw: Any) -> list[dict[str, Any]]:
    """Production v1's answer and shadow v2's answer to one request (row ``kw["row"]``)."""
    return [record(request_id, 1, *prod, **kw),
            record(f"{request_id}:{SHADOW_VARIANT}", 2, *shadow,
                   **{**kw, "variant": SHADOW_VARIANT})]


@pytest.fixture
def two_versions(api: Api) -> Api:
    api.production()
    assert api.publish(metadata={"description": "shadow"}) == 2
    return api


def test_rest_shadow_pairs_agreement_and_confidence(two_versions: Api, engine: Engine) -> None:
    rows = [
        *pair("r-0", ("3", 0.90), ("3", 0.80)),  # agree, delta −0.10
        *pair("r-1", ("1", 0.60), ("7", 0.70)),  # disagree, +0.10
        *pair("r-2", ("5", 0.50), ("5", 0.75), caller="device:pi-1"),  # agree, +0.25
        # a two-row request: rows pair by index (row 0 agrees, row 1 does not)
        *pair("r-3", ("2", 0.40), ("2", 0.45), row=0),  # +0.05
        *pair("r-3", ("4", 0.90), ("9", 0.30), row=1),  # −0.60
        # the shadow run failed: no pair
        record("r-4", 1, "0", 0.9),
        record("r-4:shadow", 2, None, None, status=500, variant=SHADOW_VARIANT),
        # production's record is not written (yet): no pair
        record("r-5:shadow", 2, "6", 0.99, variant=SHADOW_VARIANT),
        # production failed after all (its record is a refusal): no pair
        record("r-6", 1, None, None, status=503),
        record("r-6:shadow", 2, "8", 0.5, variant=SHADOW_VARIANT),
        # a request not sampled for the shadow: production alone
        record("r-7", 1, "1", 0.8),
        # a shadow record outside the window (older than `since`)
        *pair("r-8", ("1", 0.9), ("2", 0.1), ago_s=7200),
    ]
    with engine.begin() as conn:
        insert_records(conn, rows)
        insert_records(conn, rows[:4])  # a batch written twice is stored, and paired, once
    since = NOW - timedelta(hours=1)
    with Session(engine) as session:
        shadow = version_evidence(session, model="digits", version=2, since=since)
        production = version_evidence(session, model="digits", version=1, since=since)
        device = version_evidence(session, model="digits", version=2, since=since,
                                  device_ids=["pi-1"])
        older = version_evidence(session, model="digits", version=2,
                                 since=NOW - timedelta(hours=3), until=since)
        later = version_evidence(session, model="digits", version=2,
                                 since=NOW - timedelta(seconds=5))
    assert (shadow.rest_shadow_n, shadow.rest_shadow_agree) == (5, 3)
    assert shadow.rest_shadow_confidence_delta_sum == pytest.approx(
        -0.10 + 0.10 + 0.25 + 0.05 - 0.60)
    # the shadow's records are still its REST figures under variant "shadow"
    assert (shadow.requests, shadow.errors) == (7, 1)  # r-0…r-6 shadow ids (r-4 failed)
    assert (production.rest_shadow_n, production.rest_shadow_agree) == (0, 0)
    assert (device.rest_shadow_n, device.rest_shadow_agree) == (1, 1)
    assert device.rest_shadow_confidence_delta_sum == pytest.approx(0.25)
    assert (older.rest_shadow_n, older.rest_shadow_agree) == (1, 0)
    assert older.rest_shadow_confidence_delta_sum == pytest.approx(-0.8)
    assert (later.rest_shadow_n, later.rest_shadow_agree) == (0, 0)
    out = shadow.to_dict()
    assert (out["rest_shadow_n"], out["rest_shadow_agree"]) == (5, 3)
    # the shadow guard and the rollout timeline read them
    spec = GuardSpec(kind="shadow_agreement", margin=0.5, min_samples=5)
    assert evaluate(spec, shadow, production).decision == PASS  # 3/5 ≥ 0.5
    strict = GuardSpec(kind="shadow_agreement", margin=0.1, min_samples=5)
    assert evaluate(strict, shadow, production).decision == FAIL  # 3/5 < 0.9
    assert evidence_summary(shadow)["rest_shadow_n"] == 5


def test_rest_shadow_without_records_is_zero(two_versions: Api, engine: Engine) -> None:
    with Session(engine) as session:
        ev = version_evidence(session, model="digits", version=2,
                              since=NOW - timedelta(hours=1))
    assert (ev.rest_shadow_n, ev.rest_shadow_agree, ev.rest_shadow_confidence_delta_sum) == (
        0, 0, 0.0)
    r = evaluate(GuardSpec(kind="shadow_agreement", margin=0.1, min_samples=1), ev, ev)
    assert r.decision == "wait" and "too little data" in r.reason
