"""The V2 inference fast path: ``POST /v2/models/{m}[/versions/{v}]/infer`` as a raw ASGI app.

FastAPI's routing, dependency solving and request objects cost more than a tiny model's whole
answer, so :class:`InferFastPath`, a pure ASGI middleware, answers inference requests before
FastAPI sees them. It sits inside the request-context, body-limit and metrics middlewares
(:mod:`server.middleware`, :mod:`server.metrics`), so a fast answer has its request id, its
access-log record, its body limit and its metrics exactly like any other request; for the
metrics it names the route's template in ``scope["route"]``, as FastAPI's router would.

One request: the credentials are checked from memory (:func:`server.deps.identify`; a device
token through the token cache, read from the database once), refused as the V2 routes refuse
them (:func:`server.api.routes.inference.require_inference_caller`); then the body is read raw
and :func:`server.inference.answer.encoded_answer` decodes, resolves (from the serving table),
runs (the version's batcher, inline for a tiny model) and encodes it, the inference log taking
its record off the request's path. A refusal gets the body and status the application's
exception handlers give (:func:`server.errors.handled_error`: ``{"error": ...}``, 4xx or 503);
anything else propagates, and the request-context middleware answers 500.

What the fast path does not take goes to the FastAPI route, which answers as it always did:
another method or path, a query string (the route refuses repeated parameters), a model name
outside :data:`edgefleet.bounds.NAME_PATTERN` (the route's 400 names the rule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.bounds import NAME_PATTERN
from server.api.routes.inference import require_inference_caller
from server.deps import identify
from server.errors import handled_error
from server.inference.answer import encoded_answer, resolve_request
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
    """Answer V2 inference requests before FastAPI's routing (see the module notes).

    ``host`` is the FastAPI application: its ``state.edgefleet`` (:class:`AppState`) and
    ``state.inference_log`` are read per request.
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
        try:
            content, headers = await self._answer(scope, receive, context, model, version)
        except Exception as exc:
            refusal = handled_error(scope["path"], exc)
            if refusal is None:
                raise
            await refusal(scope, receive, send)
            return
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(len(content)).encode("latin-1")))
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    async def _answer(self, scope: Scope, receive: Receive, context: dict[str, Any], model: str,
                      version: str | None) -> tuple[bytes, dict[str, str]]:
        state: AppState = self.host.state.edgefleet
        headers = _headers(scope)
        caller = await identify(state, None, headers.get("x-admin-key"),
                                headers.get("authorization"))
        context["caller"] = caller
        await require_inference_caller(caller, state)
        body = await _body(receive)
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


async def _body(receive: Receive) -> bytes:
    """The whole request body (:class:`~starlette.requests.ClientDisconnect` when the client
    goes away first, as Starlette's ``Request.body`` raises)."""
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
