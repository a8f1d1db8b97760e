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

Inference speaks the server's V2 JSON (:mod:`edge_client.v2`), honours the request's ``outputs``
and says in ``parameters.path`` which path answered. Errors are V2 error bodies
``{"error": "..."}`` with the server's codes: 400 bad input (also a batch over ``max_batch``
rows or an unknown output), 404 unknown route, model or version, 413 body over
``max_request_bytes`` (from ``Content-Length`` before reading, or while reading a chunked body),
503 only when neither the local model nor the server could answer.

It binds to 127.0.0.1 only: applications on the device talk to it; nothing else can.
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
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edge_client.errors import (
    AgentError,
    ConfigurationError,
    InvalidInputError,
    ModelUnavailableError,
    UnknownModelError,
)
from edge_client.v2 import (
    PROBABILITIES,
    array_from_request,
    error_body,
    requested_outputs,
    response_from_probs,
)
from edgefleet import __version__
from edgefleet.wire import InferenceRequest

if TYPE_CHECKING:
    from edge_client.agent import Agent

log = logging.getLogger(__name__)
_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?$")
_READY = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/ready$")


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

    def _send(self, status: HTTPStatus, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _too_large(self, what: str) -> _HTTPError:
        self.close_connection = True  # the rest of the body is never read
        limit = self.server.agent.settings.max_request_bytes
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
        if length > self.server.agent.settings.max_request_bytes:
            raise self._too_large(f"body of {length} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _chunked_body(self) -> bytes:
        limit = self.server.agent.settings.max_request_bytes
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
        path = self.path.split("?", 1)[0]
        self._body_read = False
        try:
            status, body = self._route(method, path)
        except _HTTPError as exc:
            status, body = exc.status, error_body(str(exc))
        except InvalidInputError as exc:
            status, body = HTTPStatus.BAD_REQUEST, error_body(str(exc))
        except UnknownModelError as exc:
            status, body = HTTPStatus.NOT_FOUND, error_body(str(exc))
        except ModelUnavailableError as exc:
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, error_body(str(exc))
        except AgentError as exc:
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, error_body(str(exc))
        except Exception as exc:  # the endpoint must survive anything a request triggers
            log.exception("local http: %s %s failed", method, path)
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, error_body(f"internal error: {exc}")
        if not self._body_read and (self.headers.get("Content-Length", "0") != "0"
                                    or "Transfer-Encoding" in self.headers):
            self.close_connection = True  # an unread body would be parsed as the next request
        self._send(status, body)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # --- routes ------------------------------------------------------------------------------
    def _route(self, method: str, path: str) -> tuple[HTTPStatus, Any]:
        agent = self.server.agent
        if method == "GET" and path == "/v2":
            return HTTPStatus.OK, {"name": "edgefleet", "version": __version__, "extensions": []}
        if method == "GET" and path == "/v2/health/live":
            return HTTPStatus.OK, {"live": True}
        if method == "GET" and path == "/v2/health/ready":
            ready = agent.models.active is not None
            return (HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE), {"ready": ready}
        if method == "GET" and path == "/v1/status":
            return HTTPStatus.OK, agent.status()
        if method == "GET" and (m := _MODEL.match(path)):
            return HTTPStatus.OK, self._metadata(m.group(1), _version(m.group(2)))
        if method == "GET" and (m := _READY.match(path)):
            return self._ready(m.group(1), _version(m.group(2)))
        if method == "POST" and (m := _INFER.match(path)):
            return HTTPStatus.OK, self._infer(m.group(1), _version(m.group(2)))
        if method == "POST" and path == "/v1/labels":
            return HTTPStatus.CREATED, self._labels()
        raise _HTTPError(HTTPStatus.NOT_FOUND, f"no route {method} {path}")

    def _json(self) -> Any:
        try:
            return json.loads(self._body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from exc

    def _infer(self, model: str, version: int | None) -> dict[str, Any]:
        try:
            request = InferenceRequest.model_validate(self._json())
        except ValidationError as exc:
            raise InvalidInputError(f"not a V2 inference request: {exc}") from exc
        agent = self.server.agent
        active = agent.models.active
        manifest = active.runtime.manifest if active is not None else None
        output_name = manifest.output.name if manifest is not None else PROBABILITIES
        outputs = requested_outputs(request, output_name)  # refused before any inference
        x = array_from_request(request, manifest.input.name if manifest else None)
        single = manifest is not None and x.shape == manifest.input.sample_shape
        rows = 1 if single or x.ndim == 1 else x.shape[0]
        limit = agent.settings.max_batch
        if not 1 <= rows <= limit:
            raise InvalidInputError(f"batch size {rows} is outside 1..{limit}")
        pred = agent.predict(x, model=model, version=version)
        response = response_from_probs(pred.model, pred.version, pred.probs, pred.classes,
                                       path=pred.path, id=request.id, output_name=output_name,
                                       outputs=outputs)
        return response.model_dump(mode="json", exclude_none=True)

    def _served(self, model: str, version: int | None) -> Any:
        """The active model when it is the one (and version) named, else 404."""
        active = self.server.agent.models.active
        if active is None or active.info.model != model:
            raise UnknownModelError(f"model {model!r} is not active on this device")
        if version is not None and version != active.info.version:
            raise UnknownModelError(
                f"version {version} of {model!r} is not active on this device "
                f"(version {active.info.version} is)")
        return active

    def _metadata(self, model: str, version: int | None) -> dict[str, Any]:
        active = self._served(model, version)
        m = active.runtime.manifest
        return {
            "name": active.info.model, "versions": [str(active.info.version)],
            "platform": "tflite",
            "inputs": [{"name": m.input.name, "datatype": "FP32",
                        "shape": [-1, *m.input.sample_shape]}],
            "outputs": [{"name": m.output.name, "datatype": "FP32",
                         "shape": [-1, m.output.n_classes]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"version": str(active.info.version), "plan_name": m.name,
                           "feature_names": list(m.input.feature_names),
                           "class_labels": list(m.output.class_labels)},
        }

    def _ready(self, model: str, version: int | None) -> tuple[HTTPStatus, Any]:
        agent = self.server.agent
        a = agent.assignment
        if agent.models.active is None and a is not None and a.model == model and (
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
        stored = self.server.agent.record_label(body["inputs"], body["labels"])
        return {"stored": stored}


def _version(text: str | None) -> int | None:
    """A version path segment: a positive integer, else 404 (as the server)."""
    if text is None:
        return None
    if not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise UnknownModelError(f"unknown version {text!r}: versions are positive integers")
    return int(text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, agent: Agent, port: int) -> None:
        self.agent = agent
        super().__init__(("127.0.0.1", port), _Handler)


class LocalServer:
    """The local endpoint in a background thread: ``start()``, ``port``, ``stop()``.

    Parameters
    ----------
    agent : Agent
        Answers the requests.
    port : int
        Port on 127.0.0.1 (0 picks a free one; see ``port`` after ``start()``).
    """

    def __init__(self, agent: Agent, port: int = 0) -> None:
        try:
            self._server = _Server(agent, port)
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
