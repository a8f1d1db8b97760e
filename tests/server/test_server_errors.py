"""A 500 over real HTTP (uvicorn on 127.0.0.1): a well-formed error, and the keep-alive
connection stays usable; no redirect can be steered by the ``Host`` header."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI

from server.deps import get_session
from server.main import create_app
from server.settings import ServerSettings
from tests.ports import free_port
from tests.server.support import ADMIN


@dataclass
class Live:
    app: FastAPI
    port: int



@pytest.fixture
def live(settings: ServerSettings) -> Iterator[Live]:
    """The app under uvicorn in this process, with a test-only route that always fails."""
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("a bug in a route")

    app.add_api_route("/api/v1/test-only/boom", boom, methods=["GET"])
    app.add_api_route("/v2/test-only/boom", boom, methods=["GET"])
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, proxy_headers=True, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield Live(app, port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def exchange(sock: socket.socket, path: str, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on an open connection; its status, headers and body."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    length = int(found.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-body"
        body += chunk
    return int(status_line.split()[1]), found, body


def test_a_500_is_well_formed_and_keeps_the_connection(live: Live) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        for path, key in (("/api/v1/test-only/boom", "detail"), ("/v2/test-only/boom", "error")):
            status, headers, body = exchange(sock, path, {"X-Request-ID": "req-500-test"})
            assert status == 500 and headers["content-type"] == "application/json"
            assert json.loads(body) == {key: "internal server error (request id req-500-test)"}
            assert headers.get("connection", "keep-alive").lower() != "close"
            assert headers["x-request-id"] == "req-500-test"
            assert "a bug in a route" not in body.decode()
            status, _, body = exchange(sock, "/api/v1/health/live")  # the same connection
            assert status == 200 and json.loads(body) == {"status": "ok"}


def test_a_broken_dependency_is_a_500_and_the_connection_stays_usable(live: Live) -> None:
    def broken_session() -> None:
        raise ConnectionError("the database went away")

    live.app.dependency_overrides[get_session] = broken_session
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        status, _, body = exchange(sock, "/api/v1/models", ADMIN)
        assert status == 500 and set(json.loads(body)) == {"detail"}
        assert "database went away" not in body.decode()
        live.app.dependency_overrides.clear()
        status, _, body = exchange(sock, "/api/v1/models", ADMIN)
        assert status == 200 and json.loads(body)["total"] == 0


def test_a_trailing_slash_is_not_redirected_to_the_host_header(live: Live) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        for extra in ({"Host": "evil.example"}, {"X-Forwarded-Host": "evil.example",
                                                 "X-Forwarded-Proto": "https"}):
            lines = ["GET /api/v1/models/ HTTP/1.1"]
            if "Host" not in extra:
                lines.append("Host: 127.0.0.1")
            lines += [f"{k}: {v}" for k, v in {**extra, **ADMIN}.items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
            assert head.startswith("http/1.1 404") and "location:" not in head
            assert "evil.example" not in data.decode("latin-1")
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            body = data.partition(b"\r\n\r\n")[2]
            while len(body) < length:
                body += sock.recv(65536)
