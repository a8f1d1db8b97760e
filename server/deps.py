"""FastAPI dependencies: settings, database sessions, the artifact store, and the callers.

One request, one :class:`~sqlmodel.Session` (so one pooled connection at a time: a request never
waits for a second connection while holding a first). ``SessionDep`` reads; ``WriteSessionDep``
is the same session, its authentication read ended, starting a writing transaction
(``BEGIN IMMEDIATE`` on SQLite, see :mod:`registry.db`). Routes commit explicitly.
``AdminDep``, ``DeviceDep`` and ``CallerDep`` authenticate; a refusal raises
:class:`registry.errors.AuthenticationError` (401) or
:class:`registry.errors.PermissionDeniedError` (403), which :mod:`server.errors` renders.

Dependencies that do no blocking I/O are ``async`` so they run on the event loop instead of
costing a worker-thread hop each; only a device-token check (a database read) goes to a thread.

Credentials travel as ``X-Admin-Key: <key>`` or ``Authorization: Bearer <secret>``; a bearer
secret may be an admin key, a device token (``efd_…``) or an inference key.
``InferenceCallerDep`` (the V2 hot path) checks the same credentials without a database read per
request: a device token's check is remembered in ``AppState.credentials``
(:class:`server.security.TokenCache`), which the serving table empties when a token changes.
"""

from __future__ import annotations

import types
import typing
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import Depends, Path, Query, Request, Security
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from edgefleet.bounds import (
    ALIAS_PATTERN,
    DB_INT_MAX,
    NAME_PATTERN,
    canonical_number,
)
from registry.db import write_session
from registry.devices import TOKEN_PREFIX, authenticate
from registry.errors import AuthenticationError, PermissionDeniedError
from registry.search import MAX_LIMIT
from registry.store import ArtifactStore
from server.security import ANONYMOUS, Caller, NamedKey, match_key
from server.settings import ServerSettings
from server.state import AppState

__all__ = [
    "AdminDep",
    "AliasPath",
    "CallerDep",
    "DeviceDep",
    "DevicePath",
    "DeviceQuery",
    "InferenceCallerDep",
    "Limit",
    "ModelPath",
    "ModelQuery",
    "Offset",
    "SessionDep",
    "SettingsDep",
    "StateDep",
    "StoreDep",
    "VersionPath",
    "VersionQuery",
    "WriteSessionDep",
    "identify",
    "require_device",
    "single_valued_query",
]


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.edgefleet
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> ServerSettings:
    return state.settings


async def get_store(state: StateDep) -> ArtifactStore:
    return state.store


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


async def get_session(state: StateDep) -> AsyncIterator[Session]:
    session = Session(state.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        if session.in_transaction():  # an error path: roll back in a worker thread
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def _begin_write(session: Session) -> None:
    session.commit()  # end whatever authentication read
    write_session(session)


async def get_write_session(session: SessionDep) -> Session:
    await run_in_threadpool(_begin_write, session)
    return session


WriteSessionDep = Annotated[Session, Depends(get_write_session)]

#: The ``limit`` and ``offset`` query parameters of a paginated listing (a ``Page``).
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=DB_INT_MAX)]

# Path and query parameters, bounded as :mod:`edgefleet.bounds` bounds the bodies: a value no
# column can hold (an integer above 2³¹ − 1, a NUL in a name, ``01`` for 1) is a 422 before any
# query runs; a well-formed name that does not exist is a 404.
ModelPath = Annotated[
    str, Path(pattern=NAME_PATTERN, description="a model name", examples=["digits"])
]
DevicePath = Annotated[
    str, Path(pattern=NAME_PATTERN, description="a device id", examples=["pi-17"])
]
AliasPath = Annotated[
    str, Path(pattern=ALIAS_PATTERN, description="an alias", examples=["production"])
]
VersionPath = Annotated[
    int,
    Path(ge=1, le=DB_INT_MAX, description="a version number (canonical: 3, not 03 or 3.0)"),
    BeforeValidator(canonical_number),
]
ModelQuery = Annotated[
    str | None, Query(pattern=NAME_PATTERN, description="a model name", examples=["digits"])
]
DeviceQuery = Annotated[
    str | None, Query(pattern=NAME_PATTERN, description="a device id", examples=["pi-17"])
]
VersionQuery = Annotated[
    int | None,
    Query(ge=1, le=DB_INT_MAX, description="a version number (needs the model)"),
    BeforeValidator(canonical_number),
]


_LIST_PARAMS: dict[int, frozenset[str]] = {}


def _list_params(route: APIRoute) -> frozenset[str]:
    """The query parameters of ``route`` (its dependencies included) that take a list."""
    cached = _LIST_PARAMS.get(id(route))
    if cached is not None:
        return cached
    names = set()
    for field in get_flat_dependant(route.dependant).query_params:
        annotation = field.field_info.annotation
        options = typing.get_args(annotation) if typing.get_origin(annotation) in (
            typing.Union, types.UnionType) else (annotation,)
        if any(typing.get_origin(o) in (list, set, tuple) for o in options):
            names.add(field.alias)
    found = _LIST_PARAMS[id(route)] = frozenset(names)
    return found


async def single_valued_query(request: Request) -> None:
    """422 for a query parameter given twice where the route takes one value.

    Starlette would silently keep the last value, so ``?name=a&name=b`` would be accepted as
    ``b``; a parameter that takes a list (``?metric=…&metric=…``) may repeat.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    seen: set[str] = set()
    repeated = []
    for key, _ in request.query_params.multi_items():
        if key in seen:
            repeated.append(key)
        seen.add(key)
    single = [key for key in repeated if key not in _list_params(route)]
    if single:
        raise RequestValidationError(
            [
                {"type": "repeated", "loc": ("query", key), "msg": "give this parameter once"}
                for key in sorted(set(single))
            ]
        )


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthenticationError("malformed Authorization header: expected 'Bearer <token>'")
    return value.strip()


def _device(session: Session, secret: str) -> Caller:
    try:
        device = authenticate(session, secret)
    finally:
        session.commit()  # release the connection; the route starts its own transaction
    return Caller("device", device.id, device)


def _device_alone(state: AppState, secret: str) -> Caller:
    with Session(state.engine, expire_on_commit=False) as session:
        return _device(session, secret)


async def _cached_device(state: AppState, secret: str) -> Caller:
    """The device ``secret`` names, from ``state.credentials`` or checked and remembered."""
    found = state.credentials.get(secret)
    if found is None:
        epoch = state.credentials.epoch
        found = await run_in_threadpool(_device_alone, state, secret)
        state.credentials.put(secret, found, epoch)
    return found


async def _identify(
    request: Request,
    state: AppState,
    session: Session | None,
    admin_key: str | None,
    authorization: str | None,
) -> Caller:
    """:func:`identify`, the caller kept in ``request.state.caller``."""
    caller = await identify(state, session, admin_key, authorization)
    request.state.caller = caller
    return caller


async def identify(
    state: AppState,
    session: Session | None,
    admin_key: str | None,
    authorization: str | None,
) -> Caller:
    """Whoever the credentials name (ANONYMOUS without credentials); 401 for bad ones.

    Without a ``session``, a device token is checked through ``state.credentials``.
    """
    caller = ANONYMOUS
    secret = _bearer(authorization)  # a malformed header is refused even beside an admin key
    if admin_key is not None:
        key = match_key(admin_key, state.admin_keys)
        if key is None:
            raise AuthenticationError("invalid admin key")
        caller = Caller("admin", key.name)
    elif secret is not None and secret.startswith(TOKEN_PREFIX):
        if session is None:
            caller = await _cached_device(state, secret)
        else:
            caller = await run_in_threadpool(_device, session, secret)
    elif secret is not None:
        caller = _from_keys(secret, state)
    return caller


def _from_keys(secret: str, state: AppState) -> Caller:
    keys: list[tuple[Literal["admin", "app", "runner"], list[NamedKey]]] = [
        ("admin", state.admin_keys),
        ("app", state.inference_keys),
        ("runner", state.runner_keys),
    ]
    for kind, pool in keys:
        key = match_key(secret, pool)
        if key is not None:
            return Caller(kind, key.name)
    raise AuthenticationError("invalid bearer token")


# Declared for the OpenAPI document (the "Authorize" button of /docs); the headers themselves
# are parsed by _identify, which gives clearer refusals than these schemes would.
ADMIN_KEY_SCHEME = APIKeyHeader(
    name="X-Admin-Key", auto_error=False, description="an admin key (registry API)"
)
BEARER_SCHEME = HTTPBearer(
    auto_error=False, description="a device token (efd_…), an admin key or an inference key"
)


async def get_caller(
    request: Request,
    state: StateDep,
    session: SessionDep,
    _admin_scheme: Annotated[str | None, Security(ADMIN_KEY_SCHEME)] = None,
    _bearer_scheme: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)] = None,
) -> Caller:
    headers = request.headers
    return await _identify(
        request, state, session, headers.get("x-admin-key"), headers.get("authorization")
    )


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_inference_caller(
    request: Request,
    state: StateDep,
    _admin_scheme: Annotated[str | None, Security(ADMIN_KEY_SCHEME)] = None,
    _bearer_scheme: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)] = None,
) -> Caller:
    """``get_caller`` with device tokens checked through ``state.credentials`` (no session)."""
    headers = request.headers
    return await _identify(
        request, state, None, headers.get("x-admin-key"), headers.get("authorization")
    )


InferenceCallerDep = Annotated[Caller, Depends(get_inference_caller)]


async def require_admin(caller: CallerDep, state: StateDep) -> Caller:
    if caller.kind == "admin":
        return caller
    if not state.admin_keys:
        raise PermissionDeniedError("the registry API is disabled: no admin key is configured")
    if caller.kind == "anonymous":
        raise AuthenticationError("an admin key is required (X-Admin-Key or Bearer)")
    raise PermissionDeniedError(f"{caller.kind} credentials cannot use the registry API")


async def require_device(caller: CallerDep) -> Caller:
    if caller.kind == "device":
        return caller
    if caller.kind == "anonymous":
        raise AuthenticationError("a device token is required (Authorization: Bearer efd_…)")
    raise PermissionDeniedError("this route is for devices: present a device token")


AdminDep = Annotated[Caller, Depends(require_admin)]
DeviceDep = Annotated[Caller, Depends(require_device)]


def require_self(caller: Caller, device_id: str) -> None:
    """Let a device act only as itself (the operator may act for any device)."""
    if caller.kind == "admin":
        return
    if caller.kind != "device" or caller.name != device_id:
        raise PermissionDeniedError(f"this token does not belong to device {device_id!r}")
