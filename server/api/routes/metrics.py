"""``GET /metrics``: Prometheus exposition of the server (see :mod:`server.metrics`).

Unauthenticated, as Prometheus scrapes it: the load balancer of ``docker-compose.yml`` does not
forward it, so it is reached on each replica's own address (``metrics_enabled`` turns it off).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from server.metrics import CONTENT_TYPE_LATEST, render

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    fleet = getattr(request.app.state, "fleet_collector", None)
    body = await run_in_threadpool(render, fleet)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
