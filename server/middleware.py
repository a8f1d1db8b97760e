"""ASGI middleware: request ids, the access log, and request body limits.

:class:`RequestContextMiddleware` gives every request an id (the client's ``X-Request-ID`` when it
is sane, a fresh one otherwise), returns it in ``X-Request-ID``, binds it for the audit records the
request writes (:func:`registry.audit.request_scope`), and writes one structured record
per request to the ``edgefleet.server.access`` logger: request id, method, path, status, latency,
caller, and — for inference — model and version. Routes add fields through ``request.state``
(``caller``, ``model``, ``model_version``). An exception nothing else handled becomes a complete
500 in the route family's error shape (:func:`server.errors.error_body`), so the keep-alive
connection stays usable; only when the response had already started is the connection dropped.

:class:`BodyLimitMiddleware` answers 413 before reading a body whose ``Content-Length`` exceeds
the limit, and stops reading a body without one (chunked) as soon as it passes the limit.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.audit import request_scope
from server.errors import error_body, internal_error
from server.logs import background_handler

__all__ = [
    "ACCESS_LOG",
    "REQUEST_ID",
    "BodyLimitMiddleware",
    "RequestContextMiddleware",
    "declared_length",
    "error_start",
    "log_access",
    "reject_too_large",
    "request_id_of",
]

ACCESS_LOG = logging.getLogger("edgefleet.server.access")
#: The request ids kept as given (others are replaced by fresh ones).
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Fresh request ids: a random prefix per process and a counter (a uuid4 per request costs a
#: system call for its randomness on the request's path).
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


class RequestContextMiddleware:
    """Request ids and one access-log record per request (see the module notes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = time.perf_counter()
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                responded = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            with request_scope(request_id):  # audit records carry the request id
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if responded:  # too late for a 500: the server drops the connection
                raise
            body = internal_error(str(scope.get("path", "")), request_id, exc)
            await send_with_id(error_start(500, body))
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                log_access(scope, state, request_id, status, time.perf_counter() - started)


def request_id_of(scope: Scope) -> str:
    """The request's id: its last ``X-Request-ID`` header when that is sane (1–128 of
    ``A-Z a-z 0-9 . _ : -``), else a fresh one."""
    given = ""
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            given = value.decode("latin-1")  # the last one, as a dict of them would keep
    return given if REQUEST_ID.match(given) else f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def log_access(scope: Scope, state: dict[str, Any], request_id: str, status: int,
               seconds: float) -> None:
    """The request's access-log record, made (and formatted) by the log's writer thread when
    the record goes only there (:func:`server.logs.background_handler`), else here
    (``Logger.info`` would also walk the stack for the caller's source line, which no handler
    here prints)."""
    method, path = scope.get("method"), scope.get("path")
    caller = state.get("caller")
    extra = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "latency_ms": round(seconds * 1e3, 3),
        "caller": getattr(caller, "label", "anonymous:-"),
        "model": state.get("model"),
        "model_version": state.get("model_version"),
    }
    sink = background_handler(ACCESS_LOG, logging.INFO)
    if sink is not None:
        sink.defer(ACCESS_LOG, time.time(), logging.INFO, "%s %s %s", (method, path, status),
                   extra, __file__)
    else:
        ACCESS_LOG.handle(ACCESS_LOG.makeRecord(ACCESS_LOG.name, logging.INFO, __file__, 0,
                                                "%s %s %s", (method, path, status), None,
                                                extra=extra))


class BodyLimitMiddleware:
    """413 for bodies above ``limit_for(scope)`` bytes (see the module notes)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        if declared_length(scope) > limit:
            await reject_too_large(scope, send, limit)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
            return message

        await self.app(scope, limited, send)


def declared_length(scope: Scope) -> int:
    """The request's ``Content-Length`` (-1 when it has none or it is not a number)."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


def error_start(status: int, body: bytes, *extra: tuple[bytes, bytes]) -> Message:
    """The ``http.response.start`` message of a JSON error response."""
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ],
    }


async def reject_too_large(scope: Scope, send: Send, limit: int,
                           *extra: tuple[bytes, bytes]) -> None:
    """413 before reading the body; the connection closes (the body was never read)."""
    message = f"request body exceeds {limit} bytes"
    body = json.dumps(error_body(str(scope.get("path", "")), message)).encode()
    await send(error_start(413, body, (b"connection", b"close"), *extra))
    await send({"type": "http.response.body", "body": body})
