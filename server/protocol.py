"""uvicorn's httptools protocol, sending a response's head and its body in one write.

uvicorn writes the status line and headers on ``http.response.start`` and the body on
``http.response.body``: two ``send`` system calls (and, on a loopback or a LAN, two segments)
for every small response. :class:`OneWriteProtocol` is uvicorn's
:class:`~uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` whose request cycles
(:class:`_OneWriteCycle`) keep the head written on ``http.response.start`` and write it with the
first body chunk, as one buffer. A head whose body has not come by the next turn of the event loop
(a streaming response that waits before its first chunk, a ``HEAD`` request) is written alone
then, so holding it never delays a client by more than one turn. Everything else — parsing,
keep-alive, flow control, ``100 Continue``, disconnects — is uvicorn's.

:func:`server.proxy.uvicorn_options` selects it (``http="server.protocol:OneWriteProtocol"``)
when uvicorn's httptools implementation is installed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["OneWriteProtocol"]


class _Capture:
    """Stands in for the transport while uvicorn writes a response's head."""

    __slots__ = ("data", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _Prefixed:
    """Stands in for the transport while uvicorn writes a body chunk: the first write carries
    the held head in front of it."""

    __slots__ = ("head", "transport")

    def __init__(self, transport: Any, head: bytes) -> None:
        self.transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, None
        self.transport.write(head + data if head is not None else data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def flush(self) -> None:
        if self.head is not None:
            self.write(b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle, holding the response's head until its first body chunk."""

    _head: bytes | None = None

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            transport = self.transport
            capture = _Capture(transport)
            self.transport = capture  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            if capture.data:
                self._head = capture.data
                asyncio.get_running_loop().call_soon(self._flush_head)
            return
        head = self._head
        if head is None:
            await super().send(message)
            return
        self._head = None
        transport = self.transport
        prefixed = _Prefixed(transport, head)
        self.transport = prefixed  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
            prefixed.flush()  # a body uvicorn did not write (HEAD, a disconnect)

    def _flush_head(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self.transport.is_closing():
            self.transport.write(head)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`_OneWriteCycle` request cycles."""

    def on_headers_complete(self) -> None:
        before = getattr(self, "cycle", None)
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        if cycle is not None and cycle is not before and type(cycle) is RequestResponseCycle:
            cycle.__class__ = _OneWriteCycle
