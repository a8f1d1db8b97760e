"""Shadow-sampled requests, sent on to the registry server: a runner keeps no inference log.

Under a ``shadow`` rollout the route of a request (:func:`registry.rollouts.routing.choose`) can
name a shadow version besides the one that answers. The server then answers with the primary
and logs both answers in its inference log (:mod:`server.inference.answer`); those pairs are the
rollout's REST shadow evidence (``rest_shadow_*`` in :mod:`registry.version_evidence`, read by
the ``shadow_agreement`` guard). A runner holds no database connection, so it cannot write that
log: it sends such a request to the server (``registry_url``) as it came — the body, its
``Content-Type`` and ``Inference-Header-Content-Length``, the caller's ``Authorization`` — with
the request id that sampled it in ``X-Request-ID``. Sampling hashes the request id alone and a
shadow rollout routes every REST caller to ``production``, so the server, whose view of the
rollout is the one the runner's snapshot copies, makes the same choice (when the rollout moved
in between, the server's choice is the one answered and logged); its answer (status, body,
content headers) is returned as is. The caller's inference key must therefore be one of
the server's ``EDGEFLEET_SERVER_INFERENCE_KEYS`` too (``deploy/init-env.sh`` and the
Kubernetes base give both the same secret).

When the server cannot answer — unreachable, a timeout (``forward_timeout_s``), a 5xx, or 401 /
403 (the caller's key is not one of the server's) — :meth:`ShadowForwarder.forward` returns
``None`` and the runner answers with the primary itself: the caller never pays for the shadow,
and that copy is lost (``edgefleet_runner_shadow_requests_total{outcome="fallback"}``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import httpx
from starlette.responses import Response

__all__ = ["FORWARDED_HEADERS", "RETURNED_HEADERS", "ShadowForwarder"]

log = logging.getLogger("edgefleet.runner")

#: Request headers sent on with the body (the request id is set by the runner).
FORWARDED_HEADERS = ("authorization", "content-type", "inference-header-content-length")
#: Response headers of the server's answer returned to the caller.
RETURNED_HEADERS = ("content-type", "inference-header-content-length", "x-request-id")


class ShadowForwarder:
    """Posts shadow-sampled inference requests to the server (see the module notes)."""

    def __init__(self, base_url: str, *, timeout_s: float, verify: str | bool = True) -> None:
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                      verify=verify)

    async def forward(self, path: str, body: bytes, headers: Mapping[str, str],
                      request_id: str) -> Response | None:
        """The server's answer to ``body`` at ``path``, or ``None`` when it gave none that the
        caller should see (the runner answers itself)."""
        sent = {name: value for name in FORWARDED_HEADERS if (value := headers.get(name))}
        sent["x-request-id"] = request_id
        try:
            answer = await self.http.post(path, content=body, headers=sent)
        except httpx.HTTPError as exc:
            log.warning("runner: shadow request %s not forwarded (%s); answered here",
                        request_id, exc)
            return None
        if answer.status_code >= 500 or answer.status_code in (401, 403):
            log.warning("runner: the server answered the shadow request %s with %d (%s); "
                        "answered here", request_id, answer.status_code, answer.text[:200])
            return None
        returned = {name: answer.headers[name] for name in RETURNED_HEADERS
                    if name in answer.headers}
        return Response(answer.content, status_code=answer.status_code, headers=returned)

    async def aclose(self) -> None:
        await self.http.aclose()
