"""The agent's local HTTP endpoint on 127.0.0.1 (standard library only: no web framework on
the device).

Routes (JSON), the same as the server's V2 routes where they overlap::

    GET  /v2                                    server metadata (name, version, extensions)
    GET  /v2/health/live                        200 while the process runs
    GET  /v2/health/ready                       200 when a local model is active, else 503
    GET  /v2/models/{m}[/versions/{v}]          the active model's V2 metadata, under the
                                                registry name the device was assigned
    GET  /v2/models/{m}[/versions/{v}]/ready    200 for the active model; 503 assigned but not
                                                installed yet; 404 otherwise
    POST /v2/models/{m}[/versions/{v}]/infer    V2 InferenceRequest -> InferenceResponse
    POST /v1/labels                             {"inputs": [[...], ...], "labels": [...]} -> 201
    GET  /v1/status                             what ``edgefleet agent status`` shows
    GET  /metrics                               Prometheus metrics (:mod:`edge_client.metrics`)

Inference speaks the server's V2 with the server's own codec (:mod:`edgefleet.v2`): JSON with or
without a ``Content-Type``, and the binary tensor data extension
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``,
``binary_data_output``) in both directions, so standard clients such as ``tritonclient`` work
with their defaults. A body the server refuses for the active model, the endpoint refuses too,
with the same message. It honours the request's ``outputs`` and says in ``parameters.path``
which path answered. Errors are V2 error bodies ``{"error": "..."}`` with the server's codes:
400 bad input (also a batch over ``max_batch`` rows, an unknown output or malformed binary
framing), 404 unknown route, model or version, 413 body over ``max_request_bytes`` (from
``Content-Length`` before reading, or while reading a chunked body), 503 only when neither the
local model nor the server could answer.

It binds to 127.0.0.1 only: applications on the device talk to it; nothing else can. It serves
a :class:`LocalService` (what :class:`~edge_client.agent.Agent` offers), not the agent itself.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import numpy as np

from edge_client.errors import (
    AgentError,
    ConfigurationError,
    DiskFullError,
    InvalidInputError,
    ModelUnavailableError,
    StorageUnavailableError,
    UnknownModelError,
)
from edgefleet import v2
from edgefleet.bounds import path_version
from edgefleet.errors import InputError

if TYPE_CHECKING:
    from edge_client.inference import Prediction
    from edge_client.models import ActiveModel, ModelManager
    from edge_client.settings import AgentSettings
    from edgefleet.wire import Assignment

log = logging.getLogger(__name__)
_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?$")
_READY = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/ready$")


class MetricsSource(Protocol):
    """Prometheus text for ``GET /metrics`` (:class:`edge_client.metrics.AgentMetrics`)."""

    def exposition(self) -> tuple[bytes, str]: ...


class LocalService(Protocol):
    """What the endpoint serves (an :class:`~edge_client.agent.Agent` is one)."""

    @property
    def settings(self) -> AgentSettings: ...

    @property
    def models(self) -> ModelManager: ...

    @property
    def assignment(self) -> Assignment | None: ...

    @property
    def metrics(self) -> MetricsSource: ...

    def predict(self, x: Any, *, model: str | None = None, version: int | None = None
                ) -> Prediction: ...

    def record_label(self, x: Any, y: Any) -> int: ...

    def status(self) -> dict[str, Any]: ...


class Encoded(tuple[bytes, dict[str, str]]):
    """A response body already encoded, with its headers (:func:`edgefleet.v2.encode_response`)."""


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Buffer each response and send it whole (flushed per request by the base class), and
    # disable Nagle: headers and body in separate small segments would otherwise wait for the
    # client's delayed ACK, ~40 ms per request on Linux.
    wbufsize = 64 * 1024
    _body_read = False

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # --- plumbing ----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local http: " + format, *args)

    def _send(self, status: HTTPStatus, body: Any, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            if key != "Content-Type":
                self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _too_large(self, what: str) -> _HTTPError:
        self.close_connection = True  # the rest of the body is never read
        limit = self.server.service.settings.max_request_bytes
        return _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                          f"{what} exceeds the limit of {limit} bytes")

    def _body(self) -> bytes:
        """The request body, refused with 413 as soon as it is known to be over the limit."""
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body()
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError as exc:
            self.close_connection = True
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "invalid Content-Length") from exc
        if length < 0:
            self.close_connection = True
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
        if length > self.server.service.settings.max_request_bytes:
            raise self._too_large(f"body of {length} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _chunked_body(self) -> bytes:
        limit = self.server.service.settings.max_request_bytes
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                self.close_connection = True
                raise _HTTPError(HTTPStatus.BAD_REQUEST, "malformed chunked body") from exc
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if size < 0 or total > limit:
                raise self._too_large("chunked body")
            chunk = self.rfile.read(size)
            self.rfile.readline(1024)  # the chunk's CRLF
            if len(chunk) != size:
                self.close_connection = True
                raise _HTTPError(HTTPStatus.BAD_REQUEST, "chunked body ended early")
            parts.append(chunk)

    def _dispatch(self, method: str) -> None:
        path = unquote(self.path.split("?", 1)[0])  # percent-decoded, as the server's routes
        self._body_read = False
        if method == "GET" and path == "/metrics":  # Prometheus text (edge_client.metrics)
            self._send(HTTPStatus.OK, *self.server.service.metrics.exposition())
            return
        headers: dict[str, str] = {}
        try:
            status, body = self._route(method, path)
            if isinstance(body, Encoded):
                body, headers = body
        except _HTTPError as exc:
            status, body = exc.status, v2.error_body(str(exc))
        except InputError as exc:  # the codec's TensorError, the agent's InvalidInputError
            status, body = HTTPStatus.BAD_REQUEST, v2.error_body(str(exc))
        except UnknownModelError as exc:
            status, body = HTTPStatus.NOT_FOUND, v2.error_body(str(exc))
        except ModelUnavailableError as exc:
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, v2.error_body(str(exc))
        except DiskFullError as exc:  # nothing was stored: say so, the client may retry later
            status, body = HTTPStatus.INSUFFICIENT_STORAGE, v2.error_body(str(exc))
        except StorageUnavailableError as exc:  # a read-only data folder
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, v2.error_body(str(exc))
        except AgentError as exc:
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, v2.error_body(str(exc))
        except Exception as exc:  # the endpoint must survive anything a request triggers
            log.exception("local http: %s %s failed", method, path)
            status, body = (HTTPStatus.INTERNAL_SERVER_ERROR,
                            v2.error_body(f"internal error: {exc}"))
        if not self._body_read and (self.headers.get("Content-Length", "0") != "0"
                                    or "Transfer-Encoding" in self.headers):
            self.close_connection = True  # an unread body would be parsed as the next request
        self._send(status, body, headers.get("Content-Type", "application/json"), headers)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # --- routes ------------------------------------------------------------------------------
    def _route(self, method: str, path: str) -> tuple[HTTPStatus, Any]:
        service = self.server.service
        if method == "GET" and path == "/v2":
            return HTTPStatus.OK, v2.server_metadata()
        if method == "GET" and path == "/v2/health/live":
            return HTTPStatus.OK, {"live": True}
        if method == "GET" and path == "/v2/health/ready":
            ready = service.models.active is not None
            return (HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE), {"ready": ready}
        if method == "GET" and path == "/v1/status":
            return HTTPStatus.OK, service.status()
        if method == "GET" and (m := _MODEL.match(path)):
            return HTTPStatus.OK, self._metadata(m.group(1), _version(m.group(2)))
        if method == "GET" and (m := _READY.match(path)):
            return self._ready(m.group(1), _version(m.group(2)))
        if method == "POST" and (m := _INFER.match(path)):
            return HTTPStatus.OK, self._infer(m.group(1), _version(m.group(2)))
        if method == "POST" and path == "/v1/labels":
            return HTTPStatus.CREATED, self._labels()
        raise _HTTPError(HTTPStatus.NOT_FOUND, f"no route {method} {v2.shown(path)}")

    def _json(self) -> Any:
        try:
            return json.loads(self._body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST,
                             f"invalid request: invalid JSON: {exc}") from exc

    def _infer(self, model: str, version: int | None) -> Encoded:
        request = v2.decode_request(self._body(), self.headers)
        service = self.server.service
        active = service.models.active
        limit = service.settings.max_batch
        if active is not None and _names(active, model, version):  # decoded as the server does
            manifest = active.runtime.manifest
            output_name = manifest.output.name
            names = v2.requested_outputs(request.outputs, output_name)
            x = v2.decode_input(request.inputs, manifest, max_batch=limit)
        else:  # for the server's fallback, which checks it against its own manifest
            output_name = v2.PROBABILITIES
            names = v2.requested_outputs(request.outputs, output_name)
            x = _fallback_input(request, limit)
        pred = service.predict(x, model=model, version=version)
        return Encoded(v2.encode_prediction(
            request, pred.probs, pred.classes, output_name=output_name, names=names,
            model_name=pred.model,
            model_version=None if pred.version is None else str(pred.version),
            parameters={"path": pred.path}))

    def _served(self, model: str, version: int | None) -> ActiveModel:
        """The active model when it is the one (and version) named, else 404."""
        active = self.server.service.models.active
        if active is None or active.info.model != model:
            raise UnknownModelError(f"model {v2.shown(model)} is not active on this device")
        if version is not None and version != active.info.version:
            raise UnknownModelError(
                f"version {version} of {v2.shown(model)} is not active on this device "
                f"(version {active.info.version} is)")
        return active

    def _metadata(self, model: str, version: int | None) -> dict[str, Any]:
        active = self._served(model, version)
        m = active.runtime.manifest
        return v2.model_metadata(active.info.model, [active.info.version], m,
                                 version=str(active.info.version), plan_name=m.name)

    def _ready(self, model: str, version: int | None) -> tuple[HTTPStatus, Any]:
        service = self.server.service
        a = service.assignment
        if service.models.active is None and a is not None and a.model == model and (
                version in (None, a.version)):
            raise ModelUnavailableError(f"version {a.version} of {model!r} is assigned but not "
                                        "installed yet")
        active = self._served(model, version)
        return HTTPStatus.OK, {"name": active.info.model, "version": str(active.info.version),
                               "ready": True}

    def _labels(self) -> dict[str, Any]:
        body = self._json()
        if not isinstance(body, dict) or "inputs" not in body or "labels" not in body:
            raise InvalidInputError('expected {"inputs": [[...], ...], "labels": [...]}')
        stored = self.server.service.record_label(body["inputs"], body["labels"])
        return {"stored": stored}


def _names(active: ActiveModel, model: str, version: int | None) -> bool:
    """Whether the route names the active model (and version, when one is named)."""
    return active.info.model == model and version in (None, active.info.version)


def _fallback_input(request: v2.DecodedRequest, max_batch: int) -> np.ndarray:
    """The one input tensor of a request the local model does not serve (``[n, ...]``)."""
    if len(request.inputs) != 1:
        raise v2.TensorError(f"expected exactly one input tensor, got {len(request.inputs)}")
    x = request.inputs[0].array
    if x.ndim < 2:  # as the server, which wants [n, *sample_shape]
        raise v2.TensorError(f"shape {list(x.shape)} has no batch dimension: send [n, ...]")
    v2.check_batch(x.shape[0], max_batch)
    return x


def _version(text: str | None) -> int | None:
    """A version path segment: canonical (``3``, not ``03``), else 404, by the server's rule
    (:func:`edgefleet.bounds.path_version`)."""
    if text is None:
        return None
    try:
        return path_version(text)
    except ValueError as exc:
        raise UnknownModelError(str(exc)) from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service: LocalService, port: int) -> None:
        self.service = service
        super().__init__(("127.0.0.1", port), _Handler)


class LocalServer:
    """The local endpoint in a background thread: ``start()``, ``port``, ``stop()``.

    Parameters
    ----------
    service : LocalService
        Answers the requests (an :class:`~edge_client.agent.Agent`).
    port : int
        Port on 127.0.0.1 (0 picks a free one; see ``port`` after ``start()``).
    """

    def __init__(self, service: LocalService, port: int = 0) -> None:
        try:
            self._server = _Server(service, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(f"127.0.0.1:{port} is already in use") from None
            raise ConfigurationError(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalServer:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="edgefleet-local-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1)
