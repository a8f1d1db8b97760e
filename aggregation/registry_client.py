"""An httpx client of the server's registry API, for the aggregation (admin key, no database).

Routes used (``edgefleet.wire`` lists the contract; ``{m}`` model, ``{v}`` version, ``{a}`` alias)::

    GET  /api/v1/models/{m}/versions/{v}             VersionInfo
    GET  /api/v1/models/{m}/versions/{v}/manifest    PlanManifest
    GET  /api/v1/models/{m}/versions/{v}/plan        bytes (checked against the manifest)
    GET  /api/v1/models/{m}/versions/{v}/weights     bytes (checked against the manifest)
    GET  /api/v1/models/{m}/aliases/{a}              AliasInfo
    PUT  /api/v1/models/{m}/aliases/{a}              AliasMove -> AliasInfo
    POST /api/v1/models/{m}/versions                 multipart, weights-only -> VersionInfo
    GET  /api/v1/versions?model=&federated_run=&status=READY&limit=1   Page[VersionInfo]
    GET  /api/v1/models/{m}/versions/{v}/drift       fleet drift report (state.drifted, windows)
    POST /api/v1/audit/runs                          RunEvent -> AuditRecordInfo (run start/end)

Reads are retried on connection errors and 5xx (``retries`` times, with a short back-off); the
publish POST is not (a lost answer to a successful publish would otherwise make a duplicate
version; a restarted run finds what was published through :meth:`latest_run_version`).
Tests swap the network with ``transport`` (e.g. ``httpx.MockTransport`` or a real server).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel, ValidationError

from aggregation.controller import FleetDrift
from aggregation.errors import (
    RegistryClientError,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryRejected,
    RegistryUnavailable,
)
from edgefleet.audit import AuditRecordInfo, RunEvent
from edgefleet.drift.impact import FleetImpact
from edgefleet.errors import EdgeFleetError
from edgefleet.plan import PlanManifest, sha256_bytes, weights_from_bytes, weights_to_bytes
from edgefleet.rollouts import RolloutCreate, RolloutInfo
from edgefleet.wire import API_PREFIX, AliasInfo, AliasMove, Page, VersionInfo, VersionPublish

M = TypeVar("M", bound=BaseModel)


class RegistryClient:
    """The aggregation's view of the registry.

    Parameters
    ----------
    base_url : str
        The server, e.g. ``"http://127.0.0.1:8000"``.
    admin_key : str or None (default: None)
        Sent as ``X-Admin-Key``; required for publishing and moving aliases.
    timeout : float (default: 30.0)
        Per-request timeout in seconds.
    retries : int (default: 2)
        Extra attempts of a read after a connection error or a 5xx.
    transport : httpx.BaseTransport or None (default: None)
        Replaces the network (tests).
    """

    def __init__(
        self,
        base_url: str,
        admin_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-Admin-Key": admin_key} if admin_key else {}
        self.retries = max(0, retries)
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads -------------------------------------------------------------------------------
    def version(self, model: str, version: int) -> VersionInfo:
        return self._model(VersionInfo, self._get(f"/models/{model}/versions/{version}"))

    def alias(self, model: str, alias: str) -> AliasInfo | None:
        """Where ``alias`` points, or ``None`` when the model has no such alias."""
        try:
            return self._model(AliasInfo, self._get(f"/models/{model}/aliases/{alias}"))
        except RegistryNotFound:
            return None

    def production_version(self, model: str) -> int | None:
        info = self.alias(model, "production")
        return None if info is None else info.version

    def manifest(self, model: str, version: int) -> PlanManifest:
        resp = self._get(f"/models/{model}/versions/{version}/manifest")
        try:
            return PlanManifest.from_json(resp.content)
        except EdgeFleetError as exc:
            raise RegistryProtocolError(f"unusable manifest of {model} v{version}: {exc}") from exc

    def artifact(self, model: str, version: int, kind: str) -> bytes:
        """The raw bytes of one artifact (``plan``, ``weights`` or ``manifest``), unchecked:
        :mod:`aggregation.provenance` checks them against the signed version."""
        return self._get(f"/models/{model}/versions/{version}/{kind}").content

    def plan(self, model: str, version: int, manifest: PlanManifest) -> bytes:
        """The plan bytes, verified against ``manifest`` (sha256 and size)."""
        data = self._get(f"/models/{model}/versions/{version}/plan").content
        try:
            manifest.check_plan_bytes(data)
        except EdgeFleetError as exc:
            raise RegistryProtocolError(f"plan of {model} v{version}: {exc}") from exc
        return data

    def weights(self, model: str, version: int, manifest: PlanManifest) -> dict[str, np.ndarray]:
        """The weights, checked against the manifest's weight spec."""
        data = self._get(f"/models/{model}/versions/{version}/weights").content
        try:
            return weights_from_bytes(data, manifest=manifest)
        except EdgeFleetError as exc:
            raise RegistryProtocolError(f"weights of {model} v{version}: {exc}") from exc

    def latest_run_version(self, model: str, run: str) -> VersionInfo | None:
        """The newest version published by federated run ``run`` (``None`` if none yet)."""
        resp = self._get("/versions", params={"model": model, "federated_run": run,
                                              "status": "READY", "limit": 1})
        page = self._model(Page[VersionInfo], resp)
        return page.items[0] if page.items else None

    def fleet_drift(self, model: str) -> FleetDrift | None:
        """The fleet drift of the model's production version (``None`` without data): its
        impact reading (``GET .../drift/impact``, :meth:`FleetDrift.from_impact`) when the
        server has one with devices, else the server's verdicts (``GET .../drift``)."""
        version = self.production_version(model)
        if version is None:
            return None
        impact = self._fleet_impact(model, version)
        if impact is not None:
            return impact
        try:
            body = self._json(self._get(f"/models/{model}/versions/{version}/drift"))
        except RegistryNotFound:
            return None
        try:
            windows = body.get("windows") or []
            state = body["state"]
            drifted = bool(state["drifted"])
            performance = bool((state.get("performance") or {}).get("drifted", False))
            label_shift = bool((state.get("label_prior") or {}).get("drifted", False))
        except (KeyError, TypeError, AttributeError) as exc:
            raise RegistryProtocolError(f"unexpected fleet drift report: {exc}") from exc
        if not windows:
            return None
        last = windows[-1]
        return FleetDrift(model=model, drifted=drifted, score=float(last.get("share_drifted", 0)),
                          version=version, performance_drifted=performance,
                          label_shift=label_shift)

    def _fleet_impact(self, model: str, version: int) -> FleetDrift | None:
        """The impact reading of ``model`` v``version``; ``None`` when the server has no such
        route or no device reported."""
        try:
            body = self._json(self._get(f"/models/{model}/versions/{version}/drift/impact"))
        except RegistryNotFound:
            return None
        try:
            impact = FleetImpact(
                devices=int(body["devices"]), changed=int(body["changed"]),
                affected=int(body["affected"]), impact=float(body["impact"]),
                severity=float(body["severity"]),
                accuracy_drop=_optional_float(body.get("accuracy_drop")),
                mean_change=_optional_float(body.get("mean_change")),
                triggered=bool(body["triggered"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RegistryProtocolError(f"unexpected fleet impact report: {exc}") from exc
        if impact.devices == 0:
            return None
        return FleetDrift.from_impact(model, impact, version=version)

    # --- writes ------------------------------------------------------------------------------
    def publish_weights(
        self,
        model: str,
        weights: Mapping[str, np.ndarray],
        meta: VersionPublish,
        *,
        plan_sha256: str | None = None,
    ) -> VersionInfo:
        """Publish new weights on the plan of ``meta.plan_from_version`` (or lineage parent)."""
        if meta.plan_from_version is None and meta.lineage.parent_version is None:
            raise RegistryClientError("a weights-only version needs a parent or plan_from_version")
        blob = weights_to_bytes(weights, plan_sha256=plan_sha256)
        files = {"weights": ("weights.safetensors", blob, "application/octet-stream")}
        data = {"metadata": meta.model_dump_json(), "weights_sha256": sha256_bytes(blob)}
        resp = self._send("POST", f"/models/{model}/versions", retries=0, data=data, files=files)
        return self._model(VersionInfo, resp)

    def record_run(self, event: RunEvent) -> AuditRecordInfo:
        """Report a run's start or end; the server audits it as this client's admin key."""
        resp = self._send("POST", "/audit/runs", retries=0, json=event.model_dump(mode="json"))
        return self._model(AuditRecordInfo, resp)

    def move_alias(self, model: str, alias: str, version: int, *, reason: str = "",
                   rollout_percent: float | None = None) -> AliasInfo:
        body = AliasMove(version=version, reason=reason, rollout_percent=rollout_percent)
        resp = self._send("PUT", f"/models/{model}/aliases/{alias}", retries=self.retries,
                          json=body.model_dump(mode="json", exclude_none=True))
        return self._model(AliasInfo, resp)

    def start_rollout(self, model: str, candidate: int, spec: Mapping[str, Any] | None = None,
                      *, reason: str = "") -> RolloutInfo:
        """Start a guarded rollout of ``candidate`` (``spec``: the other RolloutCreate fields);
        :class:`RegistryRejected` with status 409 while the model has an active rollout."""
        body = RolloutCreate.model_validate({**(spec or {}), "model": model,
                                             "candidate": candidate, "reason": reason})
        resp = self._send("POST", "/rollouts", retries=self.retries,
                          json=body.model_dump(mode="json", exclude_unset=True))
        return self._model(RolloutInfo, resp)

    # --- plumbing ----------------------------------------------------------------------------
    def _get(self, path: str, **kw: Any) -> httpx.Response:
        return self._send("GET", path, retries=self.retries, **kw)

    def _send(self, method: str, path: str, *, retries: int, **kw: Any) -> httpx.Response:
        url = API_PREFIX + path
        for attempt in range(retries + 1):
            try:
                resp = self._http.request(method, url, **kw)
            except httpx.HTTPError as exc:
                if attempt == retries:
                    raise RegistryUnavailable(f"{method} {url}: {exc}") from exc
            else:
                if resp.status_code < 500 or attempt == retries:
                    return _check(method, url, resp)
            time.sleep(min(2.0, 0.2 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _json(resp: httpx.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except json.JSONDecodeError as exc:
            raise RegistryProtocolError(f"{resp.request.url}: not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise RegistryProtocolError(f"{resp.request.url}: expected a JSON object")
        return body

    @classmethod
    def _model(cls, model: type[M], resp: httpx.Response) -> M:
        try:
            return model.model_validate(cls._json(resp))
        except ValidationError as exc:
            raise RegistryProtocolError(f"{resp.request.url}: {exc}") from exc


def _check(method: str, url: str, resp: httpx.Response) -> httpx.Response:
    """Map HTTP errors to the package's exceptions (with the server's detail)."""
    if resp.status_code < 400:
        return resp
    try:
        detail = resp.json().get("detail", resp.text)
    except (json.JSONDecodeError, AttributeError):
        detail = resp.text
    msg = f"{method} {url} -> {resp.status_code}: {str(detail)[:500]}"
    if resp.status_code == 404:
        raise RegistryNotFound(msg, status_code=404)
    if resp.status_code < 500:
        raise RegistryRejected(msg, status_code=resp.status_code)
    raise RegistryUnavailable(msg, status_code=resp.status_code)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
