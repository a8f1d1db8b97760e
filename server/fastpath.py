"""The V2 inference fast path: ``POST /v2/models/{m}[/versions/{v}]/infer`` as a raw ASGI app.

FastAPI's routing, dependency solving, request objects and a stack of middlewares, each
wrapping ``send``, cost more than a tiny model's whole answer, so :class:`InferFastPath` sits in
front of the application's whole middleware stack (:class:`server.main.EdgeFleetApp` puts it
there) and answers inference requests itself, in one coroutine, with what those middlewares
give every other request: the request id (:func:`server.middleware.request_id_of`, returned in
``X-Request-ID``), the body limit (``max_request_bytes``: 413 before reading a larger declared
body, or as soon as a chunked one passes it), the metrics (:func:`server.metrics.record`, under
the route's template, which it names in ``scope["route"]`` as FastAPI's router would) and the
access-log record (:func:`server.middleware.log_access`).

One request: the credentials are checked from memory (:func:`server.deps.identify`; a device
token through the token cache, read from the database once), refused as the V2 routes refuse
them (:func:`server.api.routes.inference.require_inference_caller`); then the body is read raw
and :func:`server.inference.answer.encoded_answer` decodes, resolves (from the serving table),
runs (the version's batcher, inline for a tiny model) and encodes it, the inference log taking
its record off the request's path. A refusal gets the body and status the application's
exception handlers give (:func:`server.errors.handled_error`: ``{"error": ...}``, 4xx or 503);
anything else is logged and answered 500 (:func:`server.errors.internal_error`), as
:class:`server.middleware.RequestContextMiddleware` answers it elsewhere. A client that goes
away before its body has arrived gets nothing and is recorded with status 499.

What the fast path does not take goes to the application, which answers as it always did:
another method or path, a query string (the route refuses repeated parameters), a model name
outside :data:`edgefleet.bounds.NAME_PATTERN` (the route's 400 names the rule).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.bounds import NAME_PATTERN
from server import metrics
from server.api.routes.inference import require_inference_caller
from server.deps import identify
from server.errors import handled_error, internal_error
from server.inference.answer import encoded_answer, resolve_request
from server.middleware import (
    ACCESS_LOG,
    declared_length,
    error_start,
    log_access,
    reject_too_large,
    request_id_of,
)
from server.state import AppState

__all__ = ["INFER_ROUTES", "InferFastPath"]

_INFER = re.compile(r"/v2/models/([^/]+)/(?:versions/([^/]+)/)?infer")
_NAME = re.compile(NAME_PATTERN)
#: The request headers the codec reads (:func:`edgefleet.v2.decode_request`) and the
#: credentials' headers, as ASGI spells them.
_WANTED = frozenset({
    b"authorization", b"x-admin-key", b"content-encoding", b"inference-header-content-length",
})


@dataclass(frozen=True)
class RouteTemplate:
    """What ``scope["route"]`` holds for a fast answer: the route's template, for the metrics
    (``absolute``: the whole template, no router prefix before it)."""

    path: str
    absolute: bool = True


#: The templates of the two routes, as the metrics label them.
INFER_ROUTES = (RouteTemplate("/v2/models/{model}/infer"),
                RouteTemplate("/v2/models/{model}/versions/{version}/infer"))


class InferFastPath:
    """Answer V2 inference requests in front of the application (see the module notes).

    ``app`` is the application's middleware stack, which answers everything else; ``host`` is
    the FastAPI application: its ``state.edgefleet`` (:class:`AppState`: the settings give the
    body limit and whether metrics are on) and ``state.inference_log`` are read per request.
    """

    def __init__(self, app: ASGIApp, host: FastAPI) -> None:
        self.app = app
        self.host = host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        match = _INFER.fullmatch(scope["path"])
        if match is None or _NAME.fullmatch(match.group(1)) is None:
            await self.app(scope, receive, send)
            return
        model, version = match.groups()
        scope["route"] = INFER_ROUTES[version is not None]
        context: dict[str, Any] = scope.setdefault("state", {})
        request_id = context["request_id"] = request_id_of(scope)
        state: AppState = self.host.state.edgefleet
        started = time.perf_counter()
        status = 500
        try:
            status = await self._respond(scope, receive, send, state, context, model, version)
        finally:
            seconds = time.perf_counter() - started
            if state.settings.metrics_enabled:
                metrics.record(scope, status, seconds)
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                log_access(scope, context, request_id, status, seconds)

    async def _respond(self, scope: Scope, receive: Receive, send: Send, state: AppState,
                       context: dict[str, Any], model: str, version: str | None) -> int:
        """Answer the request; its status."""
        request_id: str = context["request_id"]
        tag = (b"x-request-id", request_id.encode("latin-1"))
        limit = state.settings.max_request_bytes
        if declared_length(scope) > limit:
            await reject_too_large(scope, send, limit, tag)
            return 413
        try:
            content, headers = await self._answer(scope, receive, state, context, model,
                                                  version, limit)
        except ClientDisconnect:
            return 499  # nothing to answer: the client is gone
        except Exception as exc:
            refusal = handled_error(scope["path"], exc)
            if refusal is None:
                body = internal_error(scope["path"], request_id, exc)
                await send(error_start(500, body, tag))
                await send({"type": "http.response.body", "body": body})
                return 500
            refusal.raw_headers.append(tag)
            await refusal(scope, receive, send)
            return refusal.status_code
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(len(content)).encode("latin-1")))
        raw.append(tag)
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})
        return 200

    async def _answer(self, scope: Scope, receive: Receive, state: AppState,
                      context: dict[str, Any], model: str, version: str | None, limit: int
                      ) -> tuple[bytes, dict[str, str]]:
        headers = _headers(scope)
        caller = await identify(state, None, headers.get("x-admin-key"),
                                headers.get("authorization"))
        context["caller"] = caller
        await require_inference_caller(caller, state)
        body = await _body(receive, limit)
        sink = getattr(self.host.state, "inference_log", None)

        async def resolve() -> Any:
            return await resolve_request(state, context, model, version)

        return await encoded_answer(state, sink, context, headers, body, resolve)


def _headers(scope: Scope) -> dict[str, str]:
    """The wanted request headers, by lower-case name (a repeated header: its first value, as
    Starlette's ``Headers.get`` gives)."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            out.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return out


async def _body(receive: Receive, limit: int) -> bytes:
    """The whole request body (:class:`~starlette.requests.ClientDisconnect` when the client
    goes away first, as Starlette's ``Request.body`` raises; 413 as soon as it passes
    ``limit`` bytes)."""
    chunks: list[bytes] = []
    received = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise HTTPException(413, f"request body exceeds {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
