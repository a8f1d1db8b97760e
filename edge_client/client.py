"""The agent's HTTP client for the EdgeFleet server (the routes of :mod:`edgefleet.wire`).

One :class:`ServerClient` wraps one ``httpx.Client`` with the device's bearer token, timeouts and a
retry policy:

* a connection that could not be opened (``ConnectError``/``ConnectTimeout``) is retried for
  every request, since nothing reached the server;
* other network errors and 502/503/504 are retried only for idempotent requests (GETs, telemetry,
  which carries an idempotency key, and inference, which has no side effects);
* each retry waits ``backoff_s * 2**attempt`` times a uniform jitter in ``[0.5, 1.5]``;
* 4xx answers are never retried: they raise :class:`ServerRejectedError` (401/403:
  :class:`UnauthorizedError`); exhausted retries raise :class:`ServerUnavailableError`.

``transport`` is httpx's seam: tests may pass any ``httpx.BaseTransport`` (the agent's own tests use
a real server on 127.0.0.1 instead).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from edge_client.errors import (
    ServerRejectedError,
    ServerUnavailableError,
    UnauthorizedError,
)
from edgefleet.plan import PlanManifest
from edgefleet.wire import (
    API_PREFIX,
    Assignment,
    EnrollRequest,
    EnrollResponse,
    InferenceRequest,
    InferenceResponse,
    TelemetryAck,
    TelemetryReport,
)

RETRY_STATUS = frozenset({502, 503, 504})


@dataclass(frozen=True)
class AssignmentPoll:
    """The outcome of one assignment poll.

    ``status`` is ``"changed"`` (``assignment`` holds the new one), ``"not-modified"`` (304: keep
    the current one) or ``"none"`` (the server has nothing for this device: 404).
    """

    status: str
    assignment: Assignment | None = None
    etag: str | None = None


def error_detail(response: httpx.Response) -> str:
    """The ``detail`` (FastAPI) or ``error`` (V2) of an error answer, else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if key in body:
                return str(body[key])
    return str(body)[:500]


class ServerClient:
    """A device's connection to the server.

    Parameters
    ----------
    base_url : str
        The server's base URL.
    token : str or None
        The device token (``None`` only for enrolment).
    timeout_s : float or None
        Overall default timeout; when ``None``, ``connect_timeout_s``/``read_timeout_s`` apply.
    connect_timeout_s, read_timeout_s : float
        Defaults 5 and 30 seconds.
    retries : int
        Extra attempts after a retryable failure (default 2).
    backoff_s : float
        First retry delay in seconds (default 0.5).
    transport : httpx.BaseTransport or None
        Replaces the network (httpx's transport seam).
    sleep : callable
        How to wait between retries (default ``time.sleep``).
    cancelled : callable or None
        Asked before each retry; ``True`` gives up at once with
        :class:`ServerUnavailableError` (the agent is shutting down).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        timeout_s: float | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        timeout = (
            httpx.Timeout(timeout_s)
            if timeout_s is not None
            else httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["User-Agent"] = "edgefleet-agent"
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._cancelled = cancelled or (lambda: False)
        self.http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    # --- plumbing ----------------------------------------------------------------------------
    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hurry(self, timeout_s: float = 2.0) -> None:
        """No more retries and at most ``timeout_s`` per request: the process is shutting down
        and whatever is not sent now waits on disk for the next start."""
        self.retries = 0
        self.http.timeout = httpx.Timeout(timeout_s)

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (0-based), jittered."""
        return self.backoff_s * (2**attempt) * random.uniform(0.5, 1.5)

    def request(
        self, method: str, url: str, *, idempotent: bool, **kwargs: Any
    ) -> httpx.Response:
        """Send a request with the retry policy; return any non-5xx answer (4xx raise)."""
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff(attempt - 1))
                if self._cancelled():
                    raise ServerUnavailableError(f"{last} (no more retries: shutting down)")
            try:
                response = self.http.request(method, url, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = f"cannot connect to {self.base_url}: {exc}"
                continue
            except httpx.TransportError as exc:
                last = f"{method} {url} failed: {type(exc).__name__}: {exc}"
                if idempotent:
                    continue
                raise ServerUnavailableError(last) from exc
            if response.status_code >= 500:
                last = f"{method} {url}: {response.status_code} {error_detail(response)}"
                if idempotent and response.status_code in RETRY_STATUS:
                    continue
                raise ServerUnavailableError(last)
            self.raise_for_client_error(response)
            return response
        raise ServerUnavailableError(f"{last} (after {self.retries + 1} attempts)")

    @staticmethod
    def raise_for_client_error(response: httpx.Response) -> None:
        """Raise the agent's error for a 4xx answer (304 and 2xx pass)."""
        code = response.status_code
        if code in (401, 403):
            raise UnauthorizedError(code, error_detail(response))
        if 400 <= code < 500:
            raise ServerRejectedError(code, error_detail(response))

    # --- routes ------------------------------------------------------------------------------
    def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """``POST /api/v1/devices/enroll``."""
        response = self.request(
            "POST", f"{API_PREFIX}/devices/enroll", idempotent=False,
            json=request.model_dump(mode="json"),
        )
        return EnrollResponse.model_validate_json(response.content)

    def assignment(self, device_id: str, etag: str | None = None) -> AssignmentPoll:
        """``GET /api/v1/devices/{id}/assignment`` with ``If-None-Match``."""
        headers = {"If-None-Match": etag} if etag else {}
        try:
            response = self.request(
                "GET", f"{API_PREFIX}/devices/{device_id}/assignment",
                idempotent=True, headers=headers,
            )
        except ServerRejectedError as exc:
            if exc.status_code == 404 and not isinstance(exc, UnauthorizedError):
                return AssignmentPoll("none")
            raise
        if response.status_code == 304:
            return AssignmentPoll("not-modified", etag=etag)
        assignment = Assignment.model_validate_json(response.content)
        return AssignmentPoll("changed", assignment, response.headers.get("ETag"))

    def manifest(self, url: str) -> PlanManifest:
        """``GET .../manifest`` parsed as a :class:`PlanManifest`."""
        response = self.request("GET", url, idempotent=True)
        return PlanManifest.from_json(response.content)

    @contextmanager
    def stream(self, url: str) -> Iterator[httpx.Response]:
        """Open a streamed ``GET`` (one attempt: the next poll retries a failed download)."""
        try:
            with self.http.stream("GET", url) as response:
                if response.status_code >= 500:
                    response.read()
                    raise ServerUnavailableError(
                        f"GET {url}: {response.status_code} {error_detail(response)}"
                    )
                if 400 <= response.status_code < 500:
                    response.read()
                    self.raise_for_client_error(response)
                yield response
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnavailableError(f"cannot connect to {self.base_url}: {exc}") from exc

    def post_telemetry(self, device_id: str, report: TelemetryReport) -> TelemetryAck:
        """``POST /api/v1/devices/{id}/telemetry`` (safe to retry: idempotency key)."""
        response = self.request(
            "POST", f"{API_PREFIX}/devices/{device_id}/telemetry", idempotent=True,
            content=report.model_dump_json(), headers={"Content-Type": "application/json"},
        )
        return TelemetryAck.model_validate_json(response.content)

    def infer(
        self, model: str, version: int | None, request: InferenceRequest, *, timeout_s: float
    ) -> InferenceResponse:
        """``POST /v2/models/{m}[/versions/{v}]/infer`` (the server's fallback inference)."""
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "")
        response = self.request(
            "POST", f"{path}/infer", idempotent=True, timeout=timeout_s,
            content=request.model_dump_json(exclude_none=True),
            headers={"Content-Type": "application/json"},
        )
        return InferenceResponse.model_validate_json(response.content)
