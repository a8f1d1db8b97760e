"""All routers of the server, assembled (``/api/v1`` registry API, ``/v2`` inference)."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.wire import API_PREFIX
from server.api.routes import (
    aliases,
    artifacts,
    assignment,
    audit,
    cards,
    dashboard,
    devices,
    drift,
    feedback,
    health,
    inference,
    inferences,
    models,
    monitor,
    predictions,
    rollouts,
    serving,
    telemetry,
    versions,
)

api_router = APIRouter(prefix=API_PREFIX)
for module in (
    health,
    models,
    versions,
    aliases,
    artifacts,
    devices,
    assignment,
    telemetry,
    drift,
    predictions,
    inferences,
    feedback,
    monitor,
    serving,
    audit,
    cards,
    rollouts,
):
    api_router.include_router(module.router)

dashboard_router = dashboard.router
v2_router = inference.router
v2_health_router = health.v2_router

__all__ = ["api_router", "dashboard_router", "v2_health_router", "v2_router"]
