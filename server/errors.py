"""Errors of the server, and the one place where any exception becomes an HTTP status.

::

    ServerError                  failures of the server itself (not of the request)
    ├── ModelUnavailableError    a READY version whose artifacts cannot be loaded (503)
    └── SigningUnavailableError  version signing is not ready: nothing is published (503)

:data:`STATUS` maps the registry's, the shared core's and the server's exceptions onto status
codes (the first matching class wins). Each API family has one error shape
(:func:`error_body`): ``{"error": "..."}`` under ``/v2`` (Open Inference Protocol) and
``{"detail": "...", "errors": [...]}`` everywhere else, where ``detail`` is always one sentence
and ``errors`` (only for a request that did not validate) lists each issue's ``loc``, ``msg``
and ``type`` without the offending ``input``, which may be the whole request body. A body that
is not JSON is 400; other validation failures are 422 on the registry API and 400 on ``/v2``,
where the protocol expects a plain error message. Unexpected exceptions are logged with the
request id and answered 500 without internals; the process and the connection keep serving.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
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
    DamagedArtifactError,
    DigestMismatchError,
    InvalidQueryError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
)

__all__ = [
    "STATUS",
    "ModelUnavailableError",
    "ServerError",
    "SigningUnavailableError",
    "error_body",
    "error_response_at",
    "handled_error",
    "install_error_handlers",
    "internal_error",
    "status_of",
]

log = logging.getLogger("edgefleet.server")


class ServerError(EdgeFleetError):
    """Root of the server's own errors."""


class ModelUnavailableError(ServerError):
    """A READY version that cannot be loaded (missing or unreadable artifacts)."""


class SigningUnavailableError(ServerError):
    """The signing key is not loaded yet (the database could not record it): a version would be
    stored unsigned, or a device would pin no key, so the request is refused until it is."""


STATUS: list[tuple[type[BaseException], int]] = [
    (NotFoundError, 404),
    (DigestMismatchError, 400),
    (ArtifactTooLargeError, 413),
    (ArtifactRejectedError, 422),
    (DamagedArtifactError, 503),
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
    (ModelUnavailableError, 503),
    (SigningUnavailableError, 503),
    (ServerError, 500),
    (EdgeFleetError, 400),  # last: every root above derives from it
]


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc`` (500 when it is none of the known errors)."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def is_v2_path(path: str) -> bool:
    """Whether ``path`` belongs to the Open Inference Protocol family (``/v2``)."""
    return path == "/v2" or path.startswith("/v2/")


def is_v2(request: Request) -> bool:
    return is_v2_path(request.url.path)


def error_body(
    path: str, message: str, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The one error shape of ``path``'s family.

    ``{"error": message}`` under ``/v2``; ``{"detail": message}`` elsewhere, with ``errors``
    (the validation issues, each ``loc``, ``msg``, ``type``) when the request did not validate.
    """
    if is_v2_path(path):
        return {"error": message}
    body: dict[str, Any] = {"detail": message}
    if errors:
        body["errors"] = errors
    return body


def error_response(
    request: Request,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """An error in the shape of the request's family (see :func:`error_body`)."""
    return error_response_at(request.url.path, status, message, headers, errors)


def error_response_at(
    path: str,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """:func:`error_response` for a request to ``path`` (401 adds ``WWW-Authenticate``)."""
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(error_body(path, message, errors), status_code=status, headers=headers)


def handled_error(path: str, exc: Exception) -> JSONResponse | None:
    """The answer the handlers below give ``exc`` on ``path`` (``None``: it is unexpected, and
    :class:`server.middleware.RequestContextMiddleware` answers 500)."""
    if isinstance(exc, StarletteHTTPException):
        return error_response_at(path, exc.status_code, str(exc.detail), dict(exc.headers or {}))
    if isinstance(exc, (RegistryError, EdgeFleetError)):  # ServerError is an EdgeFleetError
        return error_response_at(path, status_of(exc), str(exc) or type(exc).__name__)
    return None


async def _known(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, status_of(exc), str(exc) or type(exc).__name__)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    """400 for a body that is not JSON (and for anything on /v2), 422 for the rest."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    malformed = any(err.get("type") == "json_invalid" for err in errors)
    status = 400 if malformed or is_v2(request) else 422
    return error_response(
        request, status, summarize_validation(errors), errors=redact_validation(errors)
    )


#: Most validation errors one 422 lists (a huge malformed body must not make a huge answer).
MAX_VALIDATION_ERRORS = 20


def redact_validation(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's validation errors as ``loc``, ``msg`` and ``type`` only.

    The ``input`` may be the whole request body (secrets such as an enrolment token included)
    or megabytes of it; the location and message say what is wrong without echoing it back.
    """
    return [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "invalid")),
            "type": str(err.get("type", "value_error")),
        }
        for err in list(errors)[:MAX_VALIDATION_ERRORS]
    ]


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(request, exc.status_code, str(exc.detail), dict(exc.headers or {}))


def internal_error(path: str, request_id: str, exc: BaseException) -> bytes:
    """Log an unexpected exception; the body of the 500 that answers it (no internals)."""
    log.error("unhandled error (request %s)", request_id, exc_info=exc)
    message = f"internal server error (request id {request_id})"
    return json.dumps(error_body(path, message)).encode()


def summarize_validation(errors: Any) -> str:
    """One readable line from pydantic/FastAPI validation errors."""
    parts = []
    for err in list(errors)[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {}).get("error", "")
            # a named field (a form field holding JSON) is said; a position in the body is not
            field = next((p for p in err.get("loc", ()) if p != "body"), None)
            where = f"{field}: " if isinstance(field, str) else ""
            parts.append(f"{where}invalid JSON: {ctx}".strip())
        else:
            parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", ""))
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler above on ``app``.

    Unexpected exceptions are not handled here but by
    :class:`server.middleware.RequestContextMiddleware`, which answers a complete 500 and keeps
    the connection usable (Starlette's own last-resort handler re-raises after answering, and
    the server then drops the keep-alive connection without a ``Connection: close``).
    """
    for cls in (RegistryError, EdgeFleetError, ServerError):
        app.add_exception_handler(cls, _known)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
