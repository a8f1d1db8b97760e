"""``edgefleet agent status``: a JSON-ready description of an agent's state, read from its data
directory (credentials, model pointer, state, outbox, label store, eligibility) without starting
an agent; :meth:`edge_client.agent.Agent.status` adds the live facts of a running one.
"""

from __future__ import annotations

import time
from typing import Any

from edge_client.credentials import Credentials
from edge_client.eligibility import DeviceEligibility, EligibilityProvider
from edge_client.errors import AgentError
from edge_client.models import ModelManager
from edge_client.outbox import Outbox
from edge_client.settings import AgentSettings
from edge_client.storage import StateStore
from edge_client.store import LabelStore


def collect_status(
    settings: AgentSettings, *, eligibility: EligibilityProvider | None = None
) -> dict[str, Any]:
    """A JSON-ready description of the agent's state under ``settings.data_dir``."""
    out: dict[str, Any] = {"data_dir": str(settings.data_dir)}
    out.update(_enrolment(settings))
    out.update(_models(settings))
    out.update(_state(settings))
    out["outbox"] = _outbox(settings)
    labels = LabelStore(settings.labels_db, settings.label_store_max)
    try:
        out["labelled_examples"] = labels.count()
    finally:
        labels.close()
    provider = eligibility or DeviceEligibility.from_settings(settings)
    out["eligibility"] = provider.check().to_dict()
    return out


def _enrolment(settings: AgentSettings) -> dict[str, Any]:
    try:
        creds = Credentials.load(settings.credentials_path)
    except AgentError as exc:
        return {"enrolled": False, "credentials_error": str(exc)}
    return {"enrolled": True, "device_id": creds.device_id,
            "server_url": settings.server_url or creds.server_url}


def _models(settings: AgentSettings) -> dict[str, Any]:
    current, history = ModelManager(settings.models_dir).read_pointer()
    active = (
        {"model": current.model, "version": current.version,
         "plan_sha256": current.plan_sha256, "installed_at": current.installed_at}
        if current else None)
    return {"active": active,
            "previous": [{"model": h.model, "version": h.version} for h in history]}


def _state(settings: AgentSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    state = StateStore(settings.state_db)
    try:
        assignment = state.get("assignment")
        out["assignment"] = (
            {k: assignment[k] for k in ("model", "version", "alias")} if assignment else None)
        last_poll = state.get("last_poll")
        if last_poll:
            last_poll = {**last_poll, "seconds_ago": round(time.time() - last_poll["at"], 1)}
        out["last_poll"] = last_poll
        out["last_install_error"] = state.get("last_install_error")
        out["recent_events"] = state.get("events", [])[-5:]
    finally:
        state.close()
    return out


def _outbox(settings: AgentSettings) -> dict[str, Any]:
    outbox = Outbox(settings.outbox_db, max_entries=settings.outbox_max_reports)
    try:
        return {"depth": outbox.depth(), "max": outbox.max_entries,
                "dropped_unreported": outbox.pending_dropped(),
                "dropped_total": outbox.counter("dropped_total"),
                "merged_total": outbox.counter("merged_total")}
    finally:
        outbox.close()
