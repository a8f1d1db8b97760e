"""The client's address behind a trusted proxy (server/proxy.py), as uvicorn's rules give it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.proxy import MEMO_SIZE, ProxyHeaders, uvicorn_options


async def _receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _send(message: Any) -> None:
    return None


def _seen(trusted: str, client: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The scope the application behind :class:`ProxyHeaders` is called with."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    async def call() -> None:
        scope = {"type": "http", "client": (client, 5000), "scheme": "http", "headers": headers}
        await ProxyHeaders(app, trusted)(scope, _receive, _send)

    asyncio.run(call())
    return seen


FORWARDED = [(b"x-forwarded-for", b"203.0.113.7, 10.0.0.2"), (b"x-forwarded-proto", b"https")]


@pytest.mark.parametrize(("trusted", "client", "expected"), [
    ("127.0.0.1", "127.0.0.1", ("10.0.0.2", "https")),        # trusted proxy: the next hop
    ("127.0.0.1,10.0.0.0/8", "127.0.0.1", ("203.0.113.7", "https")),  # trusted network
    ("*", "192.0.2.1", ("203.0.113.7", "https")),             # anything trusted: the first
    ("127.0.0.1", "192.0.2.1", ("192.0.2.1", "http")),        # untrusted: headers ignored
    ("127.0.0.1", "not-an-address", ("not-an-address", "http")),
])
def test_forwarded_headers_count_only_from_trusted_proxies(
        trusted: str, client: str, expected: tuple[str, str]) -> None:
    scope = _seen(trusted, client, FORWARDED)
    assert (scope["client"][0], scope["scheme"]) == expected


def test_the_trust_of_an_address_is_decided_once_and_stays_right() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["client"][0])

    proxy = ProxyHeaders(app, "127.0.0.1")

    async def call(client: str) -> None:
        await proxy({"type": "http", "client": (client, 1), "scheme": "http",
                     "headers": [(b"x-forwarded-for", b"198.51.100.9")]}, _receive, _send)

    async def many() -> None:
        for _ in range(3):
            await call("127.0.0.1")
            await call("192.0.2.1")
        for i in range(MEMO_SIZE + 10):  # past the memo's bound: still decided correctly
            await call(f"10.1.{i // 256}.{i % 256}")
        await call("127.0.0.1")

    asyncio.run(many())
    assert seen[:6] == ["198.51.100.9", "192.0.2.1"] * 3
    assert seen[6:-1] == [f"10.1.{i // 256}.{i % 256}" for i in range(MEMO_SIZE + 10)]
    assert seen[-1] == "198.51.100.9"


def test_uvicorn_runs_without_its_own_proxy_headers() -> None:
    options = uvicorn_options({"ssl_certfile": "cert.pem"})
    assert options["proxy_headers"] is False and options["access_log"] is False
    assert options["log_config"] is None and options["ssl_certfile"] == "cert.pem"
