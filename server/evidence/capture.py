"""The V2 path's hook: run a prediction and hand what was answered to the inference log.

:func:`logged_predict` wraps :meth:`server.inference.service.InferenceService.predict`. It
times the call (decoding, the model, encoding), takes the decoded input, the probabilities and
the labels through the service's ``observe`` callback, and submits one
:class:`~server.evidence.records.Answer` — also for a request the model refused (its status from
:func:`server.errors.status_of`), which is re-raised unchanged. Request id and caller come from
``request.state`` (set by :mod:`server.middleware` and :mod:`server.deps`). With no log on the
application (``app.state.inference_log`` is ``None``) it only predicts.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from starlette.requests import Request

from edgefleet.v2 import InferenceRequest, InferenceResponse
from registry.models.columns import utcnow
from server.errors import status_of
from server.evidence.records import Answer
from server.evidence.writer import InferenceLog
from server.inference.service import InferenceService, Target

__all__ = ["logged_predict"]


def logged_predict(
    request: Request,
    service: InferenceService,
    target: Target,
    body: InferenceRequest,
    *,
    variant: str | None = None,
) -> InferenceResponse:
    """``service.predict(target, body)``, logged to ``request.app.state.inference_log``.

    ``variant`` names the rollout arm that chose ``target`` (``None`` outside a rollout); it is
    stored in the records' ``variant`` column and counted per variant by the monitor.
    """
    sink: InferenceLog | None = getattr(request.app.state, "inference_log", None)
    if sink is None:
        return service.predict(target, body)
    seen: dict[str, Any] = {}

    def observe(x: np.ndarray, probs: np.ndarray, labels: list[str]) -> None:
        seen.update(x=x, probs=probs, labels=labels)

    created_at = utcnow()
    started = time.perf_counter()
    status = 200
    try:
        return service.predict(target, body, observe=observe)
    except Exception as exc:
        status = status_of(exc)
        raise
    finally:
        caller = getattr(request.state, "caller", None)
        sink.submit(
            Answer(
                request_id=getattr(request.state, "request_id", "") or "-",
                created_at=created_at,
                model=target.model,
                version=target.version,
                alias=target.alias,
                variant=variant,
                caller=getattr(caller, "label", "anonymous:-"),
                status=status,
                latency_ms=(time.perf_counter() - started) * 1e3,
                x=seen.get("x"),
                probs=seen.get("probs"),
                labels=seen.get("labels"),
                sampled=status < 400 and sink.sample(),
            )
        )
