"""One V2 inference, from raw body to encoded answer, logged off the request's path.

:func:`encoded_answer` decodes the body (:func:`edgefleet.v2.decode_request`: JSON with or without
``Content-Type``, or the binary tensor data extension; a refusal is 400 before anything is
resolved), resolves who answers, runs the rows through the version's batcher and encodes the
answer (:func:`edgefleet.v2.encode_prediction`, honouring ``binary_data_output``). Once a
version is resolved, the answer — or the refusal, with its status — is handed to the inference
log (``app.state.inference_log``, :class:`server.evidence.writer.InferenceLog`: one
``put_nowait``; hashing and inserts happen in its thread) with the rollout arm as ``variant``.
A shadow version named by the rollout runs in a background task after the answer is ready;
its answer is logged with ``variant="shadow"`` (request id ``<id>:shadow``) and never returned.

It works on the ASGI scope's ``state`` dict (``caller``, ``request_id``), so the fast path
(:mod:`server.fastpath`) calls it without a Starlette request; :func:`answer` is the same for
a FastAPI route, as a :class:`~starlette.responses.Response`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from edgefleet import v2
from edgefleet.bounds import path_version
from registry.errors import NotFoundError
from registry.models.columns import utcnow
from registry.version_evidence import SHADOW_VARIANT
from server.errors import status_of
from server.evidence.records import Answer
from server.evidence.writer import InferenceLog
from server.inference.serving import Resolved, Serving
from server.inference.source import ServedVersion
from server.state import AppState

__all__ = ["SHADOW_VARIANT", "answer", "encoded_answer", "resolve_request", "version_number"]

#: Shadow runs in flight (kept referenced until done: asyncio holds tasks only weakly).
_SHADOWS: set[asyncio.Task[None]] = set()


def version_number(version: str) -> int:
    """The registry version ``version`` names: 404 unless it is canonical (``3``, not ``03``;
    :func:`edgefleet.bounds.path_version`, the agent's rule too)."""
    try:
        return path_version(version)
    except ValueError as exc:
        raise NotFoundError(str(exc)) from None


async def resolve_request(state: AppState, context: dict[str, Any], model: str,
                          version: str | None) -> Resolved:
    """Who answers a request for ``model`` (and ``version``, when named), recorded in the
    request's state ``context`` as ``model`` and ``model_version`` (the access log's fields)."""
    context["model"] = model
    caller = context.get("caller")
    resolved = await state.serving.resolve(
        model,
        None if version is None else version_number(version),
        caller_key=getattr(caller, "label", "") or "",
        request_key=context.get("request_id") or "",
    )
    context["model_version"] = resolved.version.number
    return resolved


async def answer(
    request: Request,
    state: AppState,
    body: bytes,
    resolve: Callable[[], Awaitable[Resolved]],
) -> Response:
    """The V2 response to ``body`` (see the module notes)."""
    context: dict[str, Any] = request.scope.setdefault("state", {})
    sink: InferenceLog | None = getattr(request.app.state, "inference_log", None)
    content, headers = await encoded_answer(state, sink, context, request.headers, body, resolve)
    return Response(content, headers=headers)


async def encoded_answer(
    state: AppState,
    sink: InferenceLog | None,
    context: dict[str, Any],
    headers: v2.Headers | Mapping[str, str],
    body: bytes,
    resolve: Callable[[], Awaitable[Resolved]],
) -> tuple[bytes, dict[str, str]]:
    """The encoded V2 answer to ``body`` and its headers; ``context`` is the request's state
    (``caller``, ``request_id``), ``sink`` the inference log (see the module notes)."""
    decoded = v2.decode_request(body, headers)
    resolved = await resolve()
    serving = state.serving
    created_at = utcnow()
    started = time.perf_counter()
    x: np.ndarray | None = None
    try:
        batcher = await serving.batcher(resolved.version)
        manifest = batcher.manifest
        names = v2.requested_outputs(decoded.outputs, manifest.output.name)
        x = v2.decode_input(decoded.inputs, manifest, max_batch=serving.max_batch)
        probs = await batcher.predict(x)
        labels = v2.predicted_labels(probs, manifest.output.class_labels)
        encoded = v2.encode_prediction(
            decoded, probs, labels, output_name=manifest.output.name, names=names,
            model_name=resolved.version.model, model_version=str(resolved.version.number),
            parameters={"alias": resolved.alias} if resolved.alias else None,
        )
    except Exception as exc:
        if sink is not None:
            _log(sink, context, resolved.version, resolved, created_at, started,
                 status=status_of(exc))
        raise
    if sink is not None:
        _log(sink, context, resolved.version, resolved, created_at, started, status=200,
             x=x, probs=probs, labels=labels)
    if resolved.shadow is not None and x is not None:
        _shadow(context, serving, sink, resolved, x)
    return encoded


def _log(
    sink: InferenceLog,
    context: dict[str, Any],
    version: ServedVersion,
    resolved: Resolved,
    created_at: Any,
    started: float,
    *,
    status: int,
    x: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    labels: list[str] | None = None,
    variant: str | None = None,
) -> None:
    caller = context.get("caller")
    ok = status < 400
    request_id = context.get("request_id") or "-"
    if variant == SHADOW_VARIANT:  # its own id: the log stores one answer per (id, row)
        request_id = f"{request_id}:{SHADOW_VARIANT}"
    sink.submit(Answer(
            request_id=request_id,
            created_at=created_at,
            model=version.model,
            version=version.number,
            alias=resolved.alias,
            caller=getattr(caller, "label", "anonymous:-"),
            status=status,
            latency_ms=(time.perf_counter() - started) * 1e3,
            variant=variant or resolved.variant,
            x=x if ok else None,
            probs=probs if ok else None,
            labels=labels if ok else None,
            sampled=ok and sink.sample(),
    ))


def _shadow(context: dict[str, Any], serving: Serving, sink: InferenceLog | None,
            resolved: Resolved, x: np.ndarray) -> None:
    """Run ``x`` on the shadow version in the background and log its answer."""
    shadow = resolved.shadow
    assert shadow is not None

    async def run() -> None:
        created_at = utcnow()
        started = time.perf_counter()
        try:
            batcher = await serving.batcher(shadow)
            probs = await batcher.predict(x)
            labels = v2.predicted_labels(probs, batcher.manifest.output.class_labels)
        except Exception as exc:
            if sink is not None:
                _log(sink, context, shadow, resolved, created_at, started,
                     status=status_of(exc), variant=SHADOW_VARIANT)
            return
        if sink is not None:
            _log(sink, context, shadow, resolved, created_at, started, status=200,
                 x=x, probs=probs, labels=labels, variant=SHADOW_VARIANT)

    task = asyncio.get_running_loop().create_task(run())
    _SHADOWS.add(task)
    task.add_done_callback(_SHADOWS.discard)
