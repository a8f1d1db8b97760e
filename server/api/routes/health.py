"""Liveness and readiness (``/api/v1/health/*`` and the V2 ``/v2/health/*``).

Live: the process answers. Ready: the database answers and is migrated to the newest schema, and
the artifact store is writable. A probe that fails answers 503 with what failed. DAMAGED versions
(:mod:`registry.integrity`) are listed under ``artifacts`` and make the status ``degraded``
(still 200: the server keeps serving every intact version and refuses the damaged ones).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from registry import migrate
from registry.db import session_scope
from registry.integrity import damaged_versions
from server.deps import StateDep
from server.state import AppState

router = APIRouter(prefix="/health", tags=["health"])
v2_router = APIRouter(prefix="/v2/health", tags=["inference (V2)"])


def readiness(state: AppState) -> dict[str, Any]:
    """``{"database": ..., "schema": ..., "store": ...}`` with ``"ok"`` or what is wrong."""
    checks: dict[str, Any] = {}
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        current, head = migrate.current_revision(state.engine), migrate.head_revision()
        checks["schema"] = "ok" if current == head else f"at {current}, expected {head}"
    except Exception as exc:  # any driver error means "not ready"
        checks["database"] = f"unavailable: {type(exc).__name__}"
    checks["store"] = "ok" if state.store.healthy() else "not writable"
    if checks["database"] == "ok" and checks["schema"] == "ok":
        checks["artifacts"] = _artifacts(state)
    return checks


def _artifacts(state: AppState) -> str:
    """``"ok"``, or which versions are DAMAGED (:mod:`registry.integrity`)."""
    with session_scope(state.engine) as session:
        damaged = damaged_versions(session)
    if not damaged:
        return "ok"
    return "damaged: " + ", ".join(f"{m} v{n}" for m, n, _ in damaged[:20]) + (
        f" (+{len(damaged) - 20} more)" if len(damaged) > 20 else "")


@router.get("/live", summary="Liveness")
def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness (database, schema, artifact store, damaged versions)",
    responses={503: {"description": "not ready: the same body, saying what failed"}},
)
def ready(state: StateDep) -> JSONResponse:
    checks = readiness(state)
    ok = all(v == "ok" for k, v in checks.items() if k != "artifacts")
    status = "not ready" if not ok else ("ready" if checks.get("artifacts") == "ok" else "degraded")
    return JSONResponse({"status": status, **checks}, 200 if ok else 503)


@v2_router.get("/live", summary="V2 server liveness")
def v2_live() -> dict[str, bool]:
    return {"live": True}


@v2_router.get(
    "/ready",
    summary="V2 server readiness",
    responses={503: {"description": "not ready: {\"ready\": false}"}},
)
def v2_ready(state: StateDep) -> JSONResponse:
    ok = all(v == "ok" for k, v in readiness(state).items() if k != "artifacts")
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)
