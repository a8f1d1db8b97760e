"""Reaching the server: what every admin command (``registry``, ``rollout``, ``audit``) shares.

:func:`open_client` makes an httpx client for the server at ``--url`` (else ``$EDGEFLEET_URL``,
else ``http://127.0.0.1:8000``) with the admin key of ``$EDGEFLEET_ADMIN_KEY``; :func:`request`
sends one request through such a client and turns every failure into one line on standard error
and exit status 1: a server that cannot be reached (refused, unknown host, timed out, TLS
failure, a URL without ``http://``) names the URL, why, and the setting to change
(:func:`unreachable`); a refusal (status >= 400) prints the status and the server's message.

Only Typer and the standard library are imported at module level; httpx inside the functions.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer

__all__ = ["DEFAULT_URL", "KEY_ENV", "URL_ENV", "URL_OPTION", "Url", "base_url", "open_client",
           "request", "unreachable"]

URL_OPTION = "--url"
URL_ENV = "EDGEFLEET_URL"
KEY_ENV = "EDGEFLEET_ADMIN_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"

Url = Annotated[str | None, typer.Option(URL_OPTION, help=f"server base URL (${URL_ENV})")]


def base_url(url: str | None) -> str:
    """The server's base URL: ``url`` (``--url``), else ``$EDGEFLEET_URL``, else the default."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def open_client(url: str | None, timeout: float) -> Any:
    """An httpx client for the server with the admin key (``typer.BadParameter`` without one)."""
    import httpx

    key = os.environ.get(KEY_ENV)
    if not key:
        raise typer.BadParameter(f"set {KEY_ENV} to an admin key of the server")
    return httpx.Client(base_url=base_url(url), headers={"X-Admin-Key": key}, timeout=timeout)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (httpx wraps httpcore wraps the OS's)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _why(exc: Exception) -> tuple[str, str]:
    """Why ``exc`` (an httpx transport error or an invalid URL) happened, and what to set."""
    import httpx

    where = f"set {URL_OPTION} or {URL_ENV} to the server's base URL"
    chain = _causes(exc)
    cert = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if cert is not None:
        return (f"TLS: certificate not trusted: {cert.verify_message or cert.reason}",
                f"set SSL_CERT_FILE to the CA bundle that signed it, or {URL_OPTION}/{URL_ENV}")
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None:
        return f"TLS handshake failed: {tls.reason or tls}", where
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused", where
    if any(isinstance(e, socket.gaierror) for e in chain):
        return "unknown host", where
    if isinstance(exc, httpx.ConnectTimeout):
        return "timed out connecting", where
    if isinstance(exc, httpx.TimeoutException):
        return "timed out waiting for an answer", where
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "the URL must start with http:// or https://", where
    if isinstance(exc, httpx.InvalidURL):
        return f"invalid URL: {exc}", where
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__, where


def _shown(url: str) -> str:
    """``url`` without a user name or password (safe to print)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def unreachable(exc: Exception, url: str) -> str:
    """The one line a command prints when the server at ``url`` could not be reached."""
    why, fix = _why(exc)
    return f"error: cannot reach the server at {_shown(url)} ({why}); {fix}"


def _refusal(r: Any) -> str:
    """A refusal's message: the server's ``detail`` (or ``error``), else the body."""
    try:
        data = r.json()
    except ValueError:
        return str(r.text)
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("error") or r.text)
    return str(r.text)


def request(open_: Callable[[str | None], AbstractContextManager[Any]], url: str | None,
            method: str, path: str, *, params: dict[str, Any] | None = None,
            body: dict[str, Any] | None = None) -> Any:
    """Send one request through a client from ``open_(url)``: the response (status < 400).

    Raises
    ------
    typer.Exit
        Status 1, after one line on standard error, when the server could not be reached
        (:func:`unreachable`) or refused the request (its status and message).
    """
    import httpx

    try:
        with open_(url) as http:
            r = http.request(method, path, params=params, json=body)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        typer.echo(unreachable(exc, base_url(url)), err=True)
        raise typer.Exit(1) from None
    if r.status_code >= 400:
        typer.echo(f"error: {r.status_code} {_refusal(r)}", err=True)
        raise typer.Exit(1)
    return r
