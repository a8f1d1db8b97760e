"""The route class of every router: credentials are checked before a malformed body is reported.

FastAPI decodes a JSON body before it solves a route's dependencies, so an anonymous caller who
sends ``{nope`` would be told "invalid JSON" (400) instead of "authenticate" (401): the answer
would reveal that the route parses before it authenticates. :class:`AuthFirstRoute` catches that
decoding failure and solves the route's dependencies once more with a ``null`` body: a
credential check that refuses raises its own error (401/403), and only a caller who passes gets
the 400. The second pass can never reach the endpoint: a required body that is ``null`` fails
validation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

__all__ = ["AuthFirstRoute"]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _malformed(exc: Exception) -> bool:
    """Whether ``exc`` is FastAPI's refusal of a body it could not decode."""
    if isinstance(exc, RequestValidationError):
        return any(err.get("type") == "json_invalid" for err in exc.errors())
    return isinstance(exc, HTTPException) and exc.status_code == 400


def _with_null_body(request: Request) -> Request:
    """``request`` again (same scope and state), its body replaced by the JSON ``null``."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"null", "more_body": False}

    scope = dict(request.scope)
    scope["headers"] = [
        (k, v) for k, v in request.scope["headers"] if k.lower() != b"content-type"
    ] + [(b"content-type", b"application/json")]
    return Request(scope, receive)


class AuthFirstRoute(APIRoute):
    """An :class:`~fastapi.routing.APIRoute` that authenticates before refusing a bad body."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        body = self.body_field
        if body is None or not body.field_info.is_required():
            return handler

        async def app(request: Request) -> Response:
            try:
                return await handler(request)
            except (RequestValidationError, HTTPException) as exc:
                if not _malformed(exc):
                    raise
                # A credential check that refuses raises here; if they pass, the null body
                # fails validation and the malformed body is the answer.
                with contextlib.suppress(RequestValidationError):
                    await handler(_with_null_body(request))
                raise exc from None

        return app
