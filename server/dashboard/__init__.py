"""The operator's dashboard: one page (``static/``: HTML, vanilla JS, SVG charts; nothing from a
CDN) and the data it shows, behind the admin login.

Login: the operator posts an admin key once; the server answers with an HttpOnly, SameSite=Strict
session cookie ``edgefleet_session`` = ``<key name>.<expiry>.<HMAC-SHA256 by that key's secret>``.
It is stateless (any replica that holds the same admin keys accepts it) and dies with the key:
removing a key from ``admin_keys`` ends its sessions.

:func:`overview` gathers, per model: its versions with metrics and lineage (parent, federated run
and round, clients, strategy), its aliases with their history, and the fleet drift of its
production version (or newest version with telemetry) over time, overall and per feature; the
devices (model, assigned and running version, last seen); the federated runs, read from the
lineage of the versions they published; and the model's newest rollouts
(:mod:`registry.rollouts.queries`) with their steps, guards and timeline with the evidence of
each decision.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session

from edgefleet.drift import DriftSummary
from registry import aliases, devices, search, versions
from registry.errors import NotFoundError
from registry.telemetry import drift_rows
from server.drift import DriftRecord, ThresholdPolicy, drift_by_feature, fleet_over_time
from server.security import NamedKey

__all__ = ["COOKIE", "SESSION_S", "STATIC", "issue_session", "overview", "verify_session"]

STATIC = Path(__file__).parent / "static"
COOKIE = "edgefleet_session"
SESSION_S = 8 * 3600
MAX_MODELS = 50
MAX_VERSIONS = 100
MAX_DEVICES = 500
TOP_FEATURES = 6


def _mac(key: NamedKey, message: str) -> str:
    return hmac.new(key.secret, message.encode(), hashlib.sha256).hexdigest()


def issue_session(key: NamedKey, *, now: float | None = None, ttl_s: int = SESSION_S) -> str:
    """A session cookie value for ``key`` that expires ``ttl_s`` from ``now``."""
    expiry = int((now or time.time()) + ttl_s)
    message = f"{key.name}.{expiry}"
    return f"{message}.{_mac(key, message)}"


def verify_session(value: str, keys: Sequence[NamedKey], *, now: float | None = None
                   ) -> NamedKey | None:
    """The admin key that issued ``value`` if it is authentic and unexpired, else ``None``."""
    parts = value.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    name, expiry, mac = parts
    if int(expiry) < (now or time.time()):
        return None
    for key in keys:
        if key.name == name and hmac.compare_digest(mac, _mac(key, f"{name}.{expiry}")):
            return key
    return None


def _versions(session: Session, model: str) -> list[dict[str, Any]]:
    page = versions.list_versions(session, model, limit=MAX_VERSIONS)
    return [v.model_dump(mode="json", include={
        "version", "status", "metrics", "lineage", "aliases", "created_at", "created_by",
        "description"}) for v in page.items]


def _aliases(session: Session, model: str) -> list[dict[str, Any]]:
    history = aliases.alias_history(session, model, limit=200).items
    out = []
    for a in aliases.list_aliases(session, model):
        moves = [e.model_dump(mode="json") for e in history if e.alias == a.alias]
        out.append({**a.model_dump(mode="json"), "history": moves})
    return out


def _records(session: Session, model: str, version: int, since: datetime) -> list[DriftRecord]:
    out = []
    for r in drift_rows(session, model, version, since=since):
        try:
            summary = DriftSummary.parse(r.drift)
        except Exception:  # the drift routes list unusable summaries; the page skips them
            continue
        out.append(DriftRecord(r.device_id, r.model, r.version, r.window_start, r.window_end,
                               summary))
    return out


def _drift(session: Session, model: str, candidates: list[dict[str, Any]], policy: ThresholdPolicy,
           since: datetime, bucket: timedelta) -> dict[str, Any] | None:
    """Fleet drift over time of the production version (else the newest with telemetry)."""
    ordered = sorted(candidates, key=lambda v: ("production" not in v["aliases"], -v["version"]))
    for v in ordered:
        records = _records(session, model, v["version"], since)
        if not records:
            continue
        reference = versions.reference_of(versions.get_version(session, model, v["version"]))
        if reference is None:
            continue
        common = {"model": model, "version": v["version"], "bucket": bucket,
                  "thresholds": policy.for_model(model)}
        fleet = fleet_over_time(records, reference, **common)
        features = drift_by_feature(records, reference, **common)
        ranked = sorted(features.features, key=lambda f: -max(
            (p.psi or 0.0 for p in f.points), default=0.0))[:TOP_FEATURES]
        return {
            "version": v["version"],
            "bucket_seconds": bucket.total_seconds(),
            "windows": [w.model_dump(mode="json", include={
                "window_start", "window_end", "n_devices", "n_reports", "share_drifted",
                "max_psi", "verdict"}) for w in fleet.windows],
            "drifted": bool(fleet.state.drifted) if fleet.state is not None else False,
            "features": [{"name": f.name, "points": [
                {"t": p.window_start.isoformat(), "psi": p.psi, "status": p.status}
                for p in f.points]} for f in ranked],
        }
    return None


def _runs(model: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for v in sorted(items, key=lambda v: v["version"]):
        lineage = v.get("lineage") or {}
        run = lineage.get("federated_run")
        if not run:
            continue
        entry = runs.setdefault(run, {"model": model, "run": run, "rounds": []})
        entry["rounds"].append({
            "round": lineage.get("federated_round"), "version": v["version"],
            "parent": lineage.get("parent_version"), "clients": lineage.get("num_clients"),
            "strategy": lineage.get("strategy"), "metrics": v.get("metrics") or {},
            "created_at": v["created_at"]})
    return list(runs.values())


MAX_ROLLOUTS = 5


def _rollouts(session: Session, model: str) -> list[dict[str, Any]]:
    """The model's newest rollouts, each with its timeline (oldest event first)."""
    from registry.rollouts.queries import list_rollouts, timeline

    out = []
    for r in list_rollouts(session, model=model, limit=MAX_ROLLOUTS).items:
        out.append({**r.model_dump(mode="json", include={
            "id", "strategy", "candidate", "baseline", "state", "step", "steps", "guards",
            "created_at", "finished_at", "reason", "awaiting"}),
            "timeline": [e.model_dump(mode="json") for e in timeline(session, r.id)]})
    return out


def overview(session: Session, policy: ThresholdPolicy, *, hours: float = 24.0,
             bucket_minutes: float = 5.0) -> dict[str, Any]:
    """Everything the dashboard shows (see the module notes), JSON-ready."""
    now = datetime.now(UTC)
    since, bucket = now - timedelta(hours=hours), timedelta(minutes=bucket_minutes)
    models, runs = [], []
    for m in search.search_models(session, limit=MAX_MODELS).items:
        try:
            items = _versions(session, m.name)
            entry = {"name": m.name, "task": m.task, "description": m.description,
                     "versions": items, "aliases": _aliases(session, m.name),
                     "drift": _drift(session, m.name, items, policy, since, bucket),
                     "rollouts": _rollouts(session, m.name)}
        except NotFoundError:  # deleted between the listing and the read
            continue
        models.append(entry)
        runs.extend(_runs(m.name, items))
    fleet = devices.list_devices(session, limit=MAX_DEVICES)
    return {
        "generated_at": now.isoformat(),
        "models": models,
        "devices": [d.model_dump(mode="json") for d in fleet.items],
        "devices_total": fleet.total,
        "runs": runs,
    }
