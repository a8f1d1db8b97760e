"""The agent's local HTTP endpoint on 127.0.0.1 (standard library only: no web framework on
the device).

Routes (JSON)::

    GET  /v2/health/live                        200 while the process runs
    GET  /v2/health/ready                       200 when a local model is active, else 503
    GET  /v2/models/{m}                         the active model's V2 metadata (404 otherwise)
    POST /v2/models/{m}[/versions/{v}]/infer    V2 InferenceRequest -> InferenceResponse
    POST /v1/labels                             {"inputs": [[...], ...], "labels": [...]} -> 201
    GET  /v1/status                             what ``edgefleet agent status`` shows

Inference speaks the server's V2 JSON (:mod:`edge_client.v2`); ``parameters.path`` of the response
says which path answered. Errors are V2 error bodies ``{"error": "..."}``: 400 bad input, 404
unknown route, 413 body over ``MAX_BODY``, 503 no model could answer.

It binds to 127.0.0.1 only: applications on the device talk to it; nothing else can.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edge_client.errors import AgentError, InvalidInputError, ModelUnavailableError
from edge_client.v2 import array_from_request, error_body, response_from_probs
from edgefleet.wire import InferenceRequest

if TYPE_CHECKING:
    from edge_client.agent import Agent

log = logging.getLogger(__name__)
MAX_BODY = 8 * 1024 * 1024
_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/(\d+))?/infer$")
_MODEL = re.compile(r"^/v2/models/([^/]+)$")


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
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "invalid Content-Length") from exc
        if length > MAX_BODY:
            self.close_connection = True
            raise _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"body of {length} bytes exceeds {MAX_BODY}")
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            status, body = self._route(method, path)
        except _HTTPError as exc:
            status, body = exc.status, error_body(str(exc))
        except InvalidInputError as exc:
            status, body = HTTPStatus.BAD_REQUEST, error_body(str(exc))
        except ModelUnavailableError as exc:
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, error_body(str(exc))
        except AgentError as exc:
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, error_body(str(exc))
        except Exception as exc:  # the endpoint must survive anything a request triggers
            log.exception("local http: %s %s failed", method, path)
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, error_body(f"internal error: {exc}")
        self._send(status, body)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # --- routes ------------------------------------------------------------------------------
    def _route(self, method: str, path: str) -> tuple[HTTPStatus, Any]:
        agent = self.server.agent
        if method == "GET" and path == "/v2/health/live":
            return HTTPStatus.OK, {"live": True}
        if method == "GET" and path == "/v2/health/ready":
            ready = agent.models.active is not None
            return (HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE), {"ready": ready}
        if method == "GET" and path == "/v1/status":
            return HTTPStatus.OK, agent.status()
        if method == "GET" and (m := _MODEL.match(path)):
            return HTTPStatus.OK, self._metadata(m.group(1))
        if method == "POST" and (m := _INFER.match(path)):
            version = int(m.group(2)) if m.group(2) else None
            return HTTPStatus.OK, self._infer(m.group(1), version)
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
        active = self.server.agent.models.active
        name = active.runtime.manifest.input.name if active else None
        x = array_from_request(request, name)
        pred = self.server.agent.predict(x, model=model, version=version)
        response = response_from_probs(pred.model, pred.version, pred.probs, pred.classes,
                                       path=pred.path, id=request.id)
        return response.model_dump(mode="json", exclude_none=True)

    def _metadata(self, model: str) -> dict[str, Any]:
        active = self.server.agent.models.active
        if active is None or active.info.model != model:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"model {model!r} is not active on this device")
        m = active.runtime.manifest
        return {
            "name": m.name, "versions": [str(active.info.version)], "platform": "tflite",
            "inputs": [{"name": m.input.name, "datatype": "FP32",
                        "shape": [-1, *m.input.sample_shape]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32",
                         "shape": [-1, m.output.n_classes]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}],
        }

    def _labels(self) -> dict[str, Any]:
        body = self._json()
        if not isinstance(body, dict) or "inputs" not in body or "labels" not in body:
            raise InvalidInputError('expected {"inputs": [[...], ...], "labels": [...]}')
        stored = self.server.agent.record_label(body["inputs"], body["labels"])
        return {"stored": stored}


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
        self._server = _Server(agent, port)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalServer:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="edgefleet-local-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
