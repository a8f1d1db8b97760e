"""Errors of the server, and the one place where any exception becomes an HTTP status.

::

    ServerError                  failures of the server itself (not of the request)
    └── ModelUnavailableError    a READY version whose artifacts cannot be loaded (503)

:data:`STATUS` maps the registry's, the shared core's and the server's exceptions onto status
codes (the first matching class wins). Responses under ``/v2`` (Open Inference Protocol) carry
``{"error": "..."}``; everything else carries FastAPI's ``{"detail": ...}``. Request validation
failures are 422 on the registry API (FastAPI's detail list, without the offending ``input``,
which may be the whole request body) and 400 on ``/v2``, where the
protocol expects a plain error message. Unexpected exceptions are logged with the request id and
answered 500 without internals; the process keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet.errors import (
    EdgeFleetError,
    InputError,
    InterpreterUnavailable,
    PlanError,
    SummaryError,
)
from registry.errors import (
    ArtifactError,
    ArtifactRejectedError,
    ArtifactTooLargeError,
    AuthenticationError,
    ConflictError,
    DigestMismatchError,
    InvalidQueryError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
)

__all__ = ["STATUS", "ModelUnavailableError", "ServerError", "install_error_handlers", "status_of"]

log = logging.getLogger("edgefleet.server")


class ServerError(Exception):
    """Root of the server's own errors."""


class ModelUnavailableError(ServerError):
    """A READY version that cannot be loaded (missing or unreadable artifacts)."""


STATUS: list[tuple[type[BaseException], int]] = [
    (NotFoundError, 404),
    (DigestMismatchError, 400),
    (ArtifactTooLargeError, 413),
    (ArtifactRejectedError, 422),
    (ArtifactError, 422),
    (ConflictError, 409),
    (InvalidQueryError, 422),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (RegistryError, 400),
    (InputError, 400),
    (PlanError, 422),
    (SummaryError, 422),
    (InterpreterUnavailable, 503),
    (EdgeFleetError, 400),
    (ModelUnavailableError, 503),
    (ServerError, 500),
]


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc`` (500 when it is none of the known errors)."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def is_v2(request: Request) -> bool:
    return request.url.path.startswith("/v2")


def error_response(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error in the shape the route family expects (``error`` on /v2, ``detail`` elsewhere)."""
    body: dict[str, Any] = {"error": message} if is_v2(request) else {"detail": message}
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(body, status_code=status, headers=headers)


async def _known(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, status_of(exc), str(exc) or type(exc).__name__)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if not is_v2(request):
        return JSONResponse(
            {"detail": jsonable_encoder(redact_validation(exc.errors()))}, status_code=422
        )
    return error_response(request, 400, summarize_validation(exc.errors()))


#: Most validation errors one 422 lists (a huge malformed body must not make a huge answer).
MAX_VALIDATION_ERRORS = 20


def redact_validation(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's validation errors without the ``input`` each one carries.

    The input may be the whole request body (secrets such as an enrolment token included) or
    megabytes of it; the location and message say what is wrong without echoing it back.
    """
    return [
        {key: value for key, value in err.items() if key not in ("input", "url")}
        for err in list(errors)[:MAX_VALIDATION_ERRORS]
    ]


async def _http(request: Request, exc: Exception) -> Any:
    assert isinstance(exc, StarletteHTTPException)
    if not is_v2(request):
        return await http_exception_handler(request, exc)
    return error_response(request, exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    log.exception("unhandled error (request %s)", request_id, exc_info=exc)
    return error_response(request, 500, f"internal server error (request id {request_id})")


def summarize_validation(errors: Any) -> str:
    """One readable line from pydantic/FastAPI validation errors."""
    parts = []
    for err in list(errors)[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {}).get("error", "")
            parts.append(f"invalid JSON: {ctx}".strip())
        else:
            parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", ""))
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler above on ``app``."""
    for cls in (RegistryError, EdgeFleetError, ServerError):
        app.add_exception_handler(cls, _known)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
