"""The operator's dashboard (``/dashboard``), behind the admin login (see :mod:`server.dashboard`).

``GET  /dashboard``                 the page (the login form until a session cookie is set)
``GET  /dashboard/static/{name}``   its script and style sheet, shipped in the package
``POST /dashboard/login``           form field ``key`` (an admin key) -> session cookie, 303
``POST /dashboard/logout``          clears the cookie, 303
``GET  /dashboard/api/overview``    everything the page shows (session cookie or X-Admin-Key)
``GET  /dashboard/api/audit``       the newest audit records (``?limit=&action=``), the chain head
``GET  /dashboard/api/audit/verify`` the chain walked (see :mod:`server.dashboard.audit_panel`)
``GET  /dashboard/card/{m}/{v}``    a version's model card as HTML
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from edgefleet.bounds import QueryText
from registry.errors import AuthenticationError, NotFoundError
from server.dashboard import COOKIE, SESSION_S, STATIC, issue_session, overview, verify_session
from server.dashboard.audit_panel import CARD_CSP, audit_panel, card_page, verify_panel
from server.deps import ModelPath, SessionDep, StateDep, VersionPath
from server.security import NamedKey, match_key
from server.state import AppState

router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                       "frame-ancestors 'none'"}


def _operator(request: Request, state: AppState) -> NamedKey | None:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return verify_session(cookie, state.admin_keys)
    header = request.headers.get("x-admin-key")
    return match_key(header, state.admin_keys) if header else None


@router.get("", response_class=HTMLResponse)
async def page(request: Request, state: StateDep) -> HTMLResponse:
    name = "index.html" if _operator(request, state) else "login.html"
    return HTMLResponse((STATIC / name).read_text(), headers=NO_STORE)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"no dashboard asset {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name],
                        headers={"Cache-Control": "max-age=300"})


@router.post("/login")
async def login(request: Request, state: StateDep,
                key: Annotated[str, Form(max_length=512)] = "") -> RedirectResponse:
    found = match_key(key, state.admin_keys) if key else None
    if found is None:
        return RedirectResponse("/dashboard?denied=1", status_code=303)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(COOKIE, issue_session(found), max_age=SESSION_S, httponly=True,
                        samesite="strict", path="/dashboard",
                        secure=request.url.scheme == "https"
                        or request.headers.get("x-forwarded-proto") == "https")
    return response


@router.post("/logout")
async def logout() -> RedirectResponse:
    response = RedirectResponse("/dashboard", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@router.get("/api/overview")
async def api_overview(
    request: Request, state: StateDep, session: SessionDep,
    hours: Annotated[float, Query(gt=0, le=24 * 90)] = 24.0,
    bucket_minutes: Annotated[float, Query(gt=0, le=24 * 60)] = 5.0,
) -> JSONResponse:
    if _operator(request, state) is None:
        raise AuthenticationError("log in at /dashboard first (or send X-Admin-Key)")
    data: dict[str, Any] = await run_in_threadpool(
        overview, session, state.drift_policy, hours=hours, bucket_minutes=bucket_minutes)
    return JSONResponse(data, headers=NO_STORE)


def _require_operator(request: Request, state: AppState) -> None:
    if _operator(request, state) is None:
        raise AuthenticationError("log in at /dashboard first (or send X-Admin-Key)")


@router.get("/api/audit")
async def api_audit(
    request: Request, state: StateDep, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    action: Annotated[QueryText | None, Query()] = None,
) -> JSONResponse:
    _require_operator(request, state)
    data = await run_in_threadpool(audit_panel, session, limit=limit, action=action)
    return JSONResponse(data, headers=NO_STORE)


@router.get("/api/audit/verify")
async def api_audit_verify(request: Request, state: StateDep, session: SessionDep
                           ) -> JSONResponse:
    _require_operator(request, state)
    data = await run_in_threadpool(verify_panel, session)
    return JSONResponse(data, headers=NO_STORE)


@router.get("/card/{model}/{version}", response_class=HTMLResponse)
async def card(request: Request, state: StateDep, session: SessionDep, model: ModelPath,
               version: VersionPath) -> HTMLResponse:
    _require_operator(request, state)
    text = await run_in_threadpool(card_page, session, model, version)
    return HTMLResponse(text, headers={**NO_STORE, "Content-Security-Policy": CARD_CSP})
