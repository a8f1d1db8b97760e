"""The error responses routes declare in the OpenAPI document, defined once.

Each API family has one error body. The registry API (``/api/v1``) answers every refusal with
:class:`ErrorBody` (``{"detail": "<one sentence>"}``, plus ``errors`` listing each validation
issue when the request did not validate); the inference API (``/v2``) with
:class:`edgefleet.wire.V2Error` (``{"error": "<message>"}``). What each status means is fixed by
:data:`server.errors.STATUS`. Routes declare the statuses particular to them with
``responses=error_responses(404, 409)``; routers declare the ones every route of theirs shares
(the credential checks: :data:`ADMIN_ERRORS`, :data:`CALLER_ERRORS`). :func:`document_errors`
adds, to every operation, the statuses that follow from its shape: 400 for a body that is not
JSON, 413 for an oversized body, 422 (400 on ``/v2``) for parameters or a body that do not
validate, and 500, each with its family's body.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from edgefleet.wire import V2Error

__all__ = [
    "ADMIN_ERRORS",
    "CALLER_ERRORS",
    "DESCRIPTIONS",
    "ErrorBody",
    "ValidationIssue",
    "add_component_schemas",
    "document_errors",
    "error_responses",
]

#: How OpenAPI references a named schema.
REF_TEMPLATE = "#/components/schemas/{model}"


class ValidationIssue(BaseModel):
    """One problem FastAPI found while validating a request (its ``input`` is never echoed)."""

    loc: list[str | int] = Field(description="where: body, query, path or header, then names")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The body of every error response of the registry API.

    Parameters
    ----------
    detail : str
        What went wrong, in one sentence meant for a person.
    errors : list of ValidationIssue
        Each validation issue, when the request did not validate (absent otherwise).
    """

    detail: str = Field(description="what went wrong", examples=["model 'digits' not found"])
    errors: list[ValidationIssue] | None = Field(
        default=None, description="each validation issue (requests that did not validate)"
    )


#: What each error status means on this API (the description shown in the OpenAPI document).
DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: a body that is not JSON, or an artifact that does not hash to its sha256",
    401: "Missing or invalid credentials (admin key, device token or enrolment token)",
    403: "Credentials that do not allow this (another device, wrong kind of key, feature off)",
    404: "The model, version, alias, device or artifact does not exist",
    409: "Conflicts with the registry's state (already exists, not READY, already enrolled…)",
    413: "The request body exceeds the configured size limit",
    422: "The request does not validate, or is well-formed but unusable (a plan that does not "
    "load, an implausible telemetry report)",
    500: "An unexpected failure of the server (logged with the request id)",
    503: "A dependency is unavailable (database, artifact store or interpreter)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` mapping declaring ``statuses`` with :class:`ErrorBody`."""
    unknown = [s for s in statuses if s not in DESCRIPTIONS]
    if unknown:
        raise ValueError(f"no description for status {unknown}")
    return {s: {"model": ErrorBody, "description": DESCRIPTIONS[s]} for s in statuses}


#: Shared by every admin-only route: no or a wrong key (401), a non-admin credential (403).
ADMIN_ERRORS = error_responses(401, 403)
#: Shared by routes open to devices and admins alike (same statuses, different credentials).
CALLER_ERRORS = ADMIN_ERRORS

_METHODS = ("get", "put", "post", "patch", "delete")
_V2_DESCRIPTIONS = {
    400: "A malformed request: not JSON, or a tensor, parameter or name that does not validate",
    413: DESCRIPTIONS[413],
    500: DESCRIPTIONS[500],
}


def _implied(path: str, operation: dict[str, Any]) -> dict[int, str]:
    """The error statuses ``operation`` can answer because of its shape (module notes)."""
    body = operation.get("requestBody")
    params = bool(operation.get("parameters")) or body is not None
    json_body = body is not None and "application/json" in body.get("content", {})
    if path == "/v2" or path.startswith("/v2/"):
        implied = {500: _V2_DESCRIPTIONS[500]}
        if params:
            implied[400] = _V2_DESCRIPTIONS[400]
        if body is not None:
            implied[413] = _V2_DESCRIPTIONS[413]
        return implied
    implied = {500: DESCRIPTIONS[500]}
    if params:
        implied[422] = DESCRIPTIONS[422]
    if json_body:
        implied[400] = DESCRIPTIONS[400]
    if body is not None:
        implied[413] = DESCRIPTIONS[413]
    return implied


def _document(document: dict[str, Any]) -> None:
    """Give every operation of ``document`` its implied errors, each with its family's body."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, V2Error):
        schema = model.model_json_schema(ref_template=REF_TEMPLATE)
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[model.__name__] = schema
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, item in document.get("paths", {}).items():
        body_name = "V2Error" if path == "/v2" or path.startswith("/v2/") else "ErrorBody"
        content = {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=body_name)}}}
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if body_name == "V2Error":
                responses.pop("422", None)  # the protocol answers 400 instead
            for status, description in _implied(path, operation).items():
                declared = responses.setdefault(str(status), {"description": description})
                declared["content"] = content


def document_errors(app: FastAPI) -> None:
    """Post-process ``app``'s OpenAPI document with :func:`_document` (once, then cached)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = base()
        _document(document)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def add_component_schemas(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put ``models`` into the OpenAPI document's ``components/schemas``.

    For models no route declares as a body or response, such as the ``metadata`` JSON field of
    the multipart version upload, so that the route's schema can reference them by name.
    """
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = base()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template=REF_TEMPLATE)
            for name, definition in schema.pop("$defs", {}).items():
                schemas.setdefault(name, definition)
            schemas.setdefault(model.__name__, schema)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
