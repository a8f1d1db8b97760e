"""Telemetry intake (idempotent) and the queries that feed the drift analysis.

:func:`record_report` stores a device's report once per ``(device, idempotency_key)``: a retry
with the same body gets the first report's id back with ``duplicate=True``; the same key with a
different body is an :class:`IdempotencyConflict`. The unique constraint, not a read-then-write,
is what guarantees it under concurrent retries (the insert runs in a savepoint).

:func:`list_reports` returns reports by model, version, device and time range, each with its
drift summary JSON, ready to be parsed into :class:`edgefleet.drift.DriftSummary` and merged.

A report's drift summary must describe the report's model and version and be binned by that
version's reference profile (:meth:`DriftSummary.check_reference`), so everything stored can be
merged with the rest of its version.

Plausibility (:func:`check_plausible`): a device reports only for what it was assigned — its
model (when it has one), and a version that its last assignment poll handed out, that it last
reported running, that a poll would hand it now, or that ``production`` or ``canary`` of the
model named within :data:`RECENTLY_ASSIGNED` (a device may still flush reports of the version
it ran before an alias moved). Counters are 0 to 2³¹ − 1, latencies and losses finite, and the
window ends no later than :data:`MAX_CLOCK_SKEW` from now. A refused report raises
:class:`~registry.errors.PermissionDeniedError` (not assigned) or
:class:`~registry.errors.InvalidQueryError` (implausible values), says why, and stores nothing.
A retry of a report already stored is acknowledged whatever has moved since.

Device events in a report are checked and stored with it (:mod:`registry.device_events`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from edgefleet.bounds import DB_INT_MAX
from edgefleet.wire import DeviceEvent, Page, TelemetryAck, TelemetryReport
from registry import device_events
from registry.assignment import assign
from registry.catalog import get_model
from registry.devices import touch
from registry.errors import (
    IdempotencyConflict,
    InvalidQueryError,
    PermissionDeniedError,
    RegistryError,
)
from registry.models import (
    CANARY,
    PRODUCTION,
    AliasEvent,
    Device,
    Model,
    ModelVersion,
    TelemetryPublic,
    TelemetryRecord,
    utcnow,
)
from registry.versions import get_version, reference_of

__all__ = [
    "MAX_CLOCK_SKEW",
    "RECENTLY_ASSIGNED",
    "DriftRow",
    "body_digest",
    "check_plausible",
    "drift_rows",
    "list_reports",
    "prepare_report",
    "record_report",
    "store_report",
]

MAX_PAGE = 5000
#: How long a version that ``production`` or ``canary`` left may still be reported.
RECENTLY_ASSIGNED = timedelta(days=7)
#: How far in the future (by the server's clock) a report's window may end.
MAX_CLOCK_SKEW = timedelta(days=1)
#: Most drift summaries one analysis query returns (newest first when there are more).
MAX_DRIFT_ROWS = 50_000


class DriftRow(NamedTuple):
    """A stored drift summary with what it describes (the summary as stored JSON)."""

    device_id: str
    model: str
    version: int
    window_start: datetime
    window_end: datetime
    drift: dict[str, Any]


def body_digest(report: TelemetryReport | dict[str, Any]) -> str:
    """sha256 of the report's canonical JSON (sorted keys): equal for equal reports.

    An empty ``events`` list and an absent ``shadow`` are left out, so a report digests as it
    did before reports carried them (a retry across an upgrade is still recognised).
    """
    body = report.model_dump(mode="json") if isinstance(report, TelemetryReport) else report
    body = {k: v for k, v in body.items()
            if not (k == "events" and not v) and not (k == "shadow" and v is None)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _existing(session: Session, device_id: str, key: str, digest: str) -> TelemetryAck | None:
    row = session.exec(
        select(TelemetryRecord.id, TelemetryRecord.body_sha256).where(
            TelemetryRecord.device_id == device_id,
            TelemetryRecord.idempotency_key == key,
        )
    ).first()
    if row is None:
        return None
    report_id, stored = row
    if stored != digest:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used for a different report"
        )
    return TelemetryAck(report_id=int(report_id or 0), duplicate=True)


def prepare_report(
    session: Session, device: Device, report: TelemetryReport
) -> TelemetryRecord | TelemetryAck:
    """Everything that only reads: validate ``report`` and build its row.

    Returns the acknowledgement when the report is a retry of a stored one (or raises
    :class:`IdempotencyConflict`), and otherwise the unsaved :class:`TelemetryRecord` for
    :func:`store_report`. Callers on SQLite can run this before taking the write lock.
    """
    if report.window_start.tzinfo is None or report.window_end.tzinfo is None:
        raise InvalidQueryError("window_start and window_end must carry a time zone (UTC)")
    if report.window_end < report.window_start:
        raise InvalidQueryError("window_end is before window_start")
    _check_values(report)
    body = report.model_dump(mode="json")
    digest = body_digest(body)
    ack = _existing(session, device.id, report.idempotency_key, digest)
    if ack is not None:
        return ack
    model = get_model(session, report.model)
    version = get_version(session, model, report.version)
    check_plausible(session, device, model, version)
    if report.drift is not None:
        _check_drift(report, version)
    device_events.check_events(session, model, report.events)
    shadow = report.shadow
    if shadow is not None:
        device_events.check_shadow(session, model, shadow)
    inf, ev = report.inference, report.local_eval
    return TelemetryRecord(
        device_id=device.id,
        idempotency_key=report.idempotency_key,
        body_sha256=digest,
        model_id=model.id or 0,
        version_id=version.id or 0,
        window_start=report.window_start,
        window_end=report.window_end,
        inference_local=inf.local,
        inference_fallback=inf.fallback,
        inference_errors=inf.errors,
        latency_ms_p50=inf.latency_ms_p50,
        latency_ms_p99=inf.latency_ms_p99,
        eval_n=ev.n_examples if ev else None,
        eval_accuracy=ev.accuracy if ev else None,
        eval_loss=ev.loss if ev else None,
        dropped_reports=report.dropped_reports,
        drift=body["drift"],
        shadow_version=shadow.version if shadow else None,
        shadow_n=shadow.n if shadow else None,
        shadow_agree=shadow.agree if shadow else None,
        shadow_confidence_delta_sum=shadow.confidence_delta_sum if shadow else None,
    )


def _check_values(report: TelemetryReport) -> None:
    """Counters in 0..2³¹ − 1, finite latencies and losses, a window not in the future.

    The wire schema already refuses these; this holds for reports built in Python as well
    (``model_copy(update=...)`` does not validate).
    """
    inf, ev = report.inference, report.local_eval
    counters = {
        "inference.local": inf.local,
        "inference.fallback": inf.fallback,
        "inference.errors": inf.errors,
        "dropped_reports": report.dropped_reports,
        "local_eval.n_examples": ev.n_examples if ev else 0,
    }
    for name, value in counters.items():
        if not 0 <= value <= DB_INT_MAX:
            raise InvalidQueryError(f"{name} must be between 0 and {DB_INT_MAX}, got {value}")
    floats = {
        "inference.latency_ms_p50": inf.latency_ms_p50,
        "inference.latency_ms_p99": inf.latency_ms_p99,
        "local_eval.accuracy": ev.accuracy if ev else None,
        "local_eval.loss": ev.loss if ev else None,
    }
    for name, number in floats.items():
        if number is not None and not math.isfinite(number):
            raise InvalidQueryError(f"{name} must be a finite number")
    if report.window_end > utcnow() + MAX_CLOCK_SKEW:
        raise InvalidQueryError(
            f"the window ends in the future ({report.window_end.isoformat()}): check the "
            "device's clock"
        )


def check_plausible(
    session: Session, device: Device, model: Model, version: ModelVersion
) -> None:
    """Refuse a report for a model or version ``device`` was not assigned (module notes)."""
    if device.model_id is not None and device.model_id != model.id:
        raise PermissionDeniedError(
            f"device {device.id!r} is assigned another model, not {model.name!r}: its reports "
            "must name the model it runs"
        )
    if version.id in (device.assigned_version_id, device.running_version_id):
        return
    try:
        if assign(session, device, model.name).version.id == version.id:
            return
    except RegistryError:  # nothing to hand out now (no production, a damaged version)
        pass
    since = utcnow() - RECENTLY_ASSIGNED
    recent = session.exec(
        select(AliasEvent.id).where(
            AliasEvent.model_id == model.id,
            col(AliasEvent.alias).in_((PRODUCTION, CANARY)),
            col(AliasEvent.at) >= since,
            sa.or_(
                col(AliasEvent.from_version_id) == version.id,
                col(AliasEvent.to_version_id) == version.id,
            ),
        )
    ).first()
    if recent is None:
        raise PermissionDeniedError(
            f"version {version.number} of {model.name!r} is not assigned to device "
            f"{device.id!r} (neither now, nor by its last poll, nor recently): the report is "
            "not stored"
        )


def store_report(session: Session, device: Device, record: TelemetryRecord,
                 events: Sequence[DeviceEvent] = ()) -> TelemetryAck:
    """Insert a prepared report and its ``events`` once; a concurrent twin that got there first
    wins (and its events are the ones stored)."""
    try:
        with session.begin_nested():
            session.add(record)
            session.flush()
            session.add_all(device_events.event_rows(record.id or 0, record.device_id,
                                                     record.model_id, events))
            session.flush()
    except IntegrityError:  # a concurrent retry of the same report got there first
        ack = _existing(session, record.device_id, record.idempotency_key, record.body_sha256)
        if ack is None:
            raise
        return ack
    touch(session, device, running_version_id=record.version_id)
    return TelemetryAck(report_id=record.id or 0, duplicate=False)


def record_report(session: Session, device: Device, report: TelemetryReport) -> TelemetryAck:
    """Store ``report`` from ``device`` once (see the module notes) and note what it runs."""
    prepared = prepare_report(session, device, report)
    if isinstance(prepared, TelemetryAck):
        return prepared
    return store_report(session, device, prepared, report.events)


def _check_drift(report: TelemetryReport, version: ModelVersion) -> None:
    """The summary must describe the report's model version, binned by its reference."""
    drift = report.drift
    assert drift is not None
    if (drift.model, drift.version) != (report.model, report.version):
        raise InvalidQueryError(
            f"the drift summary describes {drift.model!r} v{drift.version}, the report "
            f"{report.model!r} v{report.version}"
        )
    reference = reference_of(version)
    if reference is not None:
        drift.check_reference(reference)  # SummaryError when the bins do not fit


def list_reports(
    session: Session,
    *,
    model: str | None = None,
    version: int | None = None,
    device: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> Page[TelemetryPublic]:
    """Stored reports, oldest window first.

    ``since``/``until`` select the reports whose window *overlaps* ``[since, until]``
    (``window_end >= since`` and ``window_start <= until``). ``version`` needs ``model``.
    """
    if version is not None and model is None:
        raise InvalidQueryError("filtering by version needs the model")
    where = _device_and_time(device, since, until)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidQueryError(f"limit must be between 1 and {MAX_PAGE}")
    if model is not None:
        m = get_model(session, model)
        where.append(col(TelemetryRecord.model_id) == m.id)
        if version is not None:
            where.append(col(TelemetryRecord.version_id) == get_version(session, m, version).id)
    total = session.exec(select(sa.func.count()).select_from(TelemetryRecord).where(*where)).one()
    rows = session.exec(
        select(TelemetryRecord, Model.name, ModelVersion.number)
        .join(Model, col(Model.id) == col(TelemetryRecord.model_id))
        .join(ModelVersion, col(ModelVersion.id) == col(TelemetryRecord.version_id))
        .where(*where)
        .order_by(col(TelemetryRecord.window_end), col(TelemetryRecord.id))
        .limit(limit)
        .offset(offset)
    ).all()
    return Page[TelemetryPublic](items=_public(rows), total=total, limit=limit, offset=offset)


def _device_and_time(
    device: str | None, since: datetime | None, until: datetime | None
) -> list[sa.ColumnElement[bool]]:
    """Conditions on the reporting device and on windows overlapping ``[since, until]``."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidQueryError(f"{name} must carry a time zone (e.g. ...T12:00:00Z)")
    where: list[sa.ColumnElement[bool]] = []
    if device is not None:
        where.append(col(TelemetryRecord.device_id) == device)
    if since is not None:
        where.append(col(TelemetryRecord.window_end) >= since)
    if until is not None:
        where.append(col(TelemetryRecord.window_start) <= until)
    return where


def _public(rows: Sequence[tuple[TelemetryRecord, str, int]]) -> list[TelemetryPublic]:
    """Stored reports with the names of their model and version instead of the ids."""
    return [
        TelemetryPublic.model_validate(
            r, update={"id": r.id or 0, "model": name, "version": number}
        )
        for r, name, number in rows
    ]


def drift_rows(
    session: Session,
    model: str,
    version: int,
    *,
    device: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = MAX_DRIFT_ROWS,
) -> list[DriftRow]:
    """The drift summaries of a model version (windows overlapping ``[since, until]``),
    oldest window first; at most ``limit`` (the newest ones when there are more)."""
    where = _device_and_time(device, since, until)
    m = get_model(session, model)
    v = get_version(session, m, version)
    where += [col(TelemetryRecord.version_id) == v.id, col(TelemetryRecord.drift).is_not(None)]
    rows = session.exec(
        select(
            TelemetryRecord.device_id,
            TelemetryRecord.window_start,
            TelemetryRecord.window_end,
            TelemetryRecord.drift,
        )
        .where(*where)
        .order_by(col(TelemetryRecord.window_end).desc(), col(TelemetryRecord.id).desc())
        .limit(limit)
    ).all()
    return [
        DriftRow(device_id, m.name, v.number, start, end, drift or {})
        for device_id, start, end, drift in reversed(rows)
    ]
