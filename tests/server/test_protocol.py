"""``server.protocol``: a response's head and body leave in one write; a head whose body waits
is still sent within one turn of the event loop; streaming, ``HEAD`` and keep-alive still work.

The write count is read off the transport uvicorn's protocol is given (a recording transport,
fed the request bytes); the rest runs a real uvicorn with the protocol on a loopback port.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from server.protocol import OneWriteProtocol
from server.proxy import uvicorn_options
from tests.ports import free_port

RELEASE = threading.Event()


async def _plain(request: Request) -> Response:
    return PlainTextResponse("hello")


async def _slow_stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        while not RELEASE.is_set():
            await asyncio.sleep(0.01)
        yield b"late"

    return StreamingResponse(chunks(), media_type="text/plain")


APP = Starlette(routes=[Route("/plain", _plain, methods=["GET", "HEAD"]),
                        Route("/stream", _slow_stream)])


class _Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _writes(request: bytes) -> list[bytes]:
    async def run() -> list[bytes]:
        config = uvicorn.Config(APP, log_config=None, access_log=False)
        config.load()
        protocol = OneWriteProtocol(config=config, server_state=uvicorn.server.ServerState(),
                                    app_state={})
        transport = _Recording()
        protocol.connection_made(transport)
        protocol.data_received(request)
        for _ in range(50):  # the request's task, then the flush of a held head
            await asyncio.sleep(0.01)
        return transport.writes

    return asyncio.run(run())


def test_a_response_is_one_write() -> None:
    writes = _writes(b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n")
    assert len(writes) == 1
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 5" in head
    assert body == b"hello"


def test_a_head_request_gets_its_head_alone() -> None:
    writes = _writes(b"HEAD /plain HTTP/1.1\r\nHost: t\r\n\r\n")
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK") and writes[0].endswith(b"\r\n\r\n")


def test_uvicorn_options_select_the_protocol() -> None:
    assert uvicorn_options({})["http"] == "server.protocol:OneWriteProtocol"


@pytest.fixture
def served() -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(APP, host="127.0.0.1", port=port, **uvicorn_options({}))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        RELEASE.set()
        server.should_exit = True
        thread.join(10)


def test_a_streaming_head_is_sent_before_its_first_chunk(served: str) -> None:
    RELEASE.clear()
    host, port = served.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:  # the head comes while the body is held back
            chunk = sock.recv(4096)
            assert chunk, "the server closed the connection"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert b"late" not in received
        RELEASE.set()
        while not received.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(4096)
            assert chunk, "the server closed the connection"
            received += chunk
        assert b"late" in received


def test_keep_alive_serves_requests_one_after_another(served: str) -> None:
    with httpx.Client(base_url=f"http://{served}", timeout=10) as client:
        for _ in range(5):
            answer = client.get("/plain")
            assert (answer.status_code, answer.text) == (200, "hello")
        assert client.head("/plain").headers["content-length"] == "5"
