"""The client's address and scheme behind a trusted proxy (``X-Forwarded-For``/``-Proto``).

:class:`ProxyHeaders` is uvicorn's :class:`~uvicorn.middleware.proxy_headers.ProxyHeadersMiddleware`
(the same rules: the headers are believed only from a trusted proxy, and the client is the
first untrusted address from the right of ``X-Forwarded-For``), with one change: whether the
connecting address is a trusted proxy is decided once per address and remembered (at most
``MEMO_SIZE`` addresses), where uvicorn parses the address with :mod:`ipaddress` on every
request. The application installs it in front of everything (:class:`server.main.EdgeFleetApp`),
so uvicorn is started without its own (``proxy_headers=False``, :func:`uvicorn_options`).

The trusted proxies are uvicorn's setting, read the same way: ``FORWARDED_ALLOW_IPS``
(comma-separated addresses or networks, ``*`` for any), ``127.0.0.1`` when unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

__all__ = ["MEMO_SIZE", "ProxyHeaders", "trusted_proxies", "uvicorn_options"]

#: Connecting addresses whose trust is remembered (a fleet's proxies, and clients, beyond it are
#: decided afresh each time).
MEMO_SIZE = 4096


def trusted_proxies() -> str:
    """The trusted proxies as uvicorn reads them (``FORWARDED_ALLOW_IPS``, else 127.0.0.1)."""
    return os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


class _RememberedTrust:
    """A trusted-hosts set whose membership test is remembered per address."""

    def __init__(self, trusted: Any) -> None:
        self._trusted = trusted
        self._known: dict[str | None, bool] = {}

    def __contains__(self, host: str | None) -> bool:
        known = self._known.get(host)
        if known is None:
            known = host in self._trusted
            if len(self._known) < MEMO_SIZE:
                self._known[host] = known
        return known

    def get_trusted_client_address(self, x_forwarded_for: str) -> tuple[str, int]:
        address: tuple[str, int] = self._trusted.get_trusted_client_address(x_forwarded_for)
        return address


class ProxyHeaders:
    """uvicorn's proxy-headers middleware with the trust check remembered (module notes).

    Parameters
    ----------
    app
        The application behind it.
    trusted
        The trusted proxies, as ``FORWARDED_ALLOW_IPS`` spells them (default: that variable).
    """

    def __init__(self, app: ASGIApp, trusted: str | None = None) -> None:
        self._inner = ProxyHeadersMiddleware(app, trusted_hosts=trusted or trusted_proxies())  # type: ignore[arg-type]
        self._inner.trusted_hosts = _RememberedTrust(self._inner.trusted_hosts)  # type: ignore[assignment]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inner(scope, receive, send)  # type: ignore[arg-type]


def uvicorn_options(tls: Mapping[str, Any]) -> dict[str, Any]:
    """The options every uvicorn that serves the application is started with: no logging
    configuration or access log of its own (:mod:`server.logs`, :mod:`server.middleware`),
    no proxy headers of its own (:class:`ProxyHeaders` is in the application), and ``tls``."""
    return {"log_config": None, "access_log": False, "proxy_headers": False, **tls}
