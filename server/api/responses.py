"""The error responses routes declare in the OpenAPI document, defined once.

Every refusal of the registry API carries ``{"detail": "<message>"}`` (:class:`ErrorBody`); what
each status means is fixed by :data:`server.errors.STATUS`. Routes declare the statuses they can
answer with ``responses=error_responses(404, 409)``; routers declare the ones every route of theirs
shares (the credential checks: :data:`ADMIN_ERRORS`, :data:`CALLER_ERRORS`). Validation failures
(422) are declared by FastAPI itself unless a route declares 422 (:class:`UnprocessableBody`),
as routes do whose 422 may also be the registry's one-sentence refusal.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

__all__ = [
    "ADMIN_ERRORS",
    "CALLER_ERRORS",
    "DESCRIPTIONS",
    "ErrorBody",
    "UnprocessableBody",
    "ValidationIssue",
    "add_component_schemas",
    "error_responses",
]

#: How OpenAPI references a named schema.
REF_TEMPLATE = "#/components/schemas/{model}"


class ErrorBody(BaseModel):
    """The body of every error response of the registry API.

    Parameters
    ----------
    detail : str
        What went wrong, in one sentence meant for a person.
    """

    detail: str = Field(description="what went wrong", examples=["model 'digits' not found"])


#: What each error status means on this API (the description shown in the OpenAPI document).
DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: e.g. an artifact that does not hash to its declared sha256",
    401: "Missing or invalid credentials (admin key, device token or enrolment token)",
    403: "Credentials that do not allow this (another device, wrong kind of key, feature off)",
    404: "The model, version, alias, device or artifact does not exist",
    409: "Conflicts with the registry's state (already exists, not READY, already enrolled…)",
    413: "The request body exceeds the configured size limit",
    422: "The request is well-formed but unusable (e.g. a plan that does not load)",
    503: "A dependency is unavailable (database, artifact store or interpreter)",
}


class ValidationIssue(BaseModel):
    """One problem FastAPI found while validating a request (its ``input`` is never echoed)."""

    loc: list[str | int]
    msg: str
    type: str


class UnprocessableBody(BaseModel):
    """A 422: FastAPI's list of validation issues, or the registry's one-sentence refusal."""

    detail: str | list[ValidationIssue]


_MODELS: dict[int, type[BaseModel]] = {422: UnprocessableBody}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` mapping declaring ``statuses`` with :class:`ErrorBody`."""
    unknown = [s for s in statuses if s not in DESCRIPTIONS]
    if unknown:
        raise ValueError(f"no description for status {unknown}")
    return {
        s: {"model": _MODELS.get(s, ErrorBody), "description": DESCRIPTIONS[s]} for s in statuses
    }


#: Shared by every admin-only route: no or a wrong key (401), a non-admin credential (403).
ADMIN_ERRORS = error_responses(401, 403)
#: Shared by routes open to devices and admins alike (same statuses, different credentials).
CALLER_ERRORS = ADMIN_ERRORS



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
