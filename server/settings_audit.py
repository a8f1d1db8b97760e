"""Settings that change the server's behaviour, audited when they change between starts.

At start-up :func:`record_settings_change` compares the running settings' behaviour snapshot
(:func:`behaviour_snapshot`) with the ``after`` of the newest ``settings.change`` record (target
``server/settings``) and, when they differ (or none exists), writes one record from
``before`` to ``after`` as :data:`ACTOR`. Credentials appear by *name* only (an admin key added
or removed is a change; its secret never reaches the trail); the database URL, file paths and
logging are left out. A server that starts without a reachable or migrated database (it then
answers not-ready) writes nothing and logs why; the next start that reaches one records the change.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from registry import audit
from registry.db import session_scope
from registry.models import AuditRecord
from server.security import parse_keys
from server.settings import ServerSettings

__all__ = ["ACTOR", "BEHAVIOUR", "TARGET", "behaviour_snapshot", "record_settings_change"]

log = logging.getLogger(__name__)
ACTOR = "system:server-start"
TARGET = "server/settings"
#: The settings whose value changes what the server does (besides the credentials' names).
BEHAVIOUR = (
    "public_inference",
    "max_upload_bytes",
    "max_request_bytes",
    "max_batch",
    "canary_rollout_percent",
    "poll_interval_s",
    "interpreter",
    "batching",
    "drift_thresholds",
    "scrub_interval_s",
    "metrics_enabled",
    "inference_log_enabled",
    "inference_log_sample_rate",
    "inference_log_retention_days",
)
_KEYS = {
    "admin_keys": "admin",
    "enrollment_tokens": "enrol",
    "inference_keys": "app",
    "runner_keys": "runner",
}


def behaviour_snapshot(settings: ServerSettings) -> dict[str, Any]:
    """The behaviour-changing settings, with credentials reduced to their sorted names."""
    snap: dict[str, Any] = {name: getattr(settings, name) for name in BEHAVIOUR}
    for field, kind in _KEYS.items():
        snap[f"{field}.names"] = sorted(k.name for k in parse_keys(getattr(settings, field), kind))
    return snap


def record_settings_change(settings: ServerSettings, engine: Engine) -> AuditRecord | None:
    """Write a ``settings.change`` record if the behaviour snapshot changed; return it.

    ``None`` when nothing changed, or when the database is unreachable or not migrated.
    """
    try:
        return _record(settings, engine)
    except SQLAlchemyError as exc:
        log.warning("settings change not audited: the database is not ready (%s)",
                    type(exc).__name__)
        return None


def _record(settings: ServerSettings, engine: Engine) -> AuditRecord | None:
    after = json.loads(json.dumps(behaviour_snapshot(settings), default=str))
    with session_scope(engine, write=True) as session:
        last = audit.list_records(
            session,
            audit.AuditQuery(action="settings.change", target=TARGET, newest_first=True, limit=1),
        )
        before = last[0].after if last else None
        changed = sorted(k for k in after.keys() | (before or {}).keys()
                         if (before or {}).get(k) != after.get(k))
        if before is not None and not changed:
            return None
        return audit.record(session, actor=ACTOR, action="settings.change", target=TARGET,
                            before=before, after=after,
                            reason="changed: " + ", ".join(changed)[:980])

