"""Devices: enrolment, bearer tokens, look-up, labels, revocation, and when each was last seen.

A device token is ``efd_`` followed by 43 URL-safe characters (256 random bits). The registry
keeps only its sha256: :func:`authenticate` hashes what the device presents, finds the row by the
hash (a unique index) and compares the hashes in constant time. Checking the *enrolment* token is
the server's business (it comes from the settings), not the registry's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.wire import EnrollRequest, Page
from registry import audit
from registry.catalog import get_model
from registry.errors import (
    AlreadyExistsError,
    AuthenticationError,
    InvalidQueryError,
    NotFoundError,
)
from registry.models import Device, DevicePublic, DeviceUpdate, Model, ModelVersion, utcnow

__all__ = [
    "TOKEN_PREFIX",
    "authenticate",
    "devices_public",
    "enroll",
    "get_device",
    "hash_token",
    "list_devices",
    "revoke_device",
    "touch",
    "update_device",
]

TOKEN_PREFIX = "efd_"


def hash_token(token: str) -> str:
    """The sha256 (hex) under which a device token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def enroll(
    session: Session,
    request: EnrollRequest,
    *,
    replace: bool = False,
    actor: str = audit.SYSTEM_ACTOR,
) -> tuple[Device, str]:
    """Create a device and return it with its new token.

    An id that is already enrolled is refused (:class:`AlreadyExistsError`) unless ``replace``
    is set: then the device gets a new token (the old one stops working, a revocation is
    lifted), keeps its labels and model unless the request gives new ones, and takes the
    request's hardware facts when there are any. Replacing is how the operator recovers a
    re-imaged device; the server allows it only with an admin key, since anyone holding the
    fleet's enrolment token could otherwise take over any device. The caller has already
    checked the enrolment token. The token is returned once and never stored. The enrolment is
    audited (``device.enrol``) as ``actor``: the admin key's or the enrolment token's name.
    """
    device_id = request.device_id or f"dev-{secrets.token_hex(8)}"
    model_id = get_model(session, request.model).id if request.model else None
    token = new_token()
    now = utcnow()
    device = session.get(Device, device_id, with_for_update=True)
    before = None if device is None else _audit_state(device)
    if device is None:
        device = Device(id=device_id, enrolled_at=now)
        device.labels = dict(request.labels)
        device.hardware = dict(request.hardware)
    elif not replace:
        raise AlreadyExistsError(
            f"device {device_id!r} is already enrolled; re-enrolling it (e.g. after "
            "re-imaging) needs an admin key, and a new device needs an id of its own"
        )
    else:
        if request.labels:
            device.labels = dict(request.labels)
        if request.hardware:
            device.hardware = dict(request.hardware)
    device.token_hash = hash_token(token)
    device.token_issued_at = now
    device.revoked_at = None
    if model_id is not None:
        device.model_id = model_id
    device.last_seen_at = now
    session.add(device)
    try:
        session.flush()
    except sa.exc.IntegrityError:  # a concurrent enrolment of the same new id won the race
        raise AlreadyExistsError(f"device {device_id!r} is already enrolled") from None
    audit.record(session, actor=actor, action="device.enrol", target=f"device/{device_id}",
                 before=before, after=_audit_state(device))
    return device, token


def _audit_state(device: Device) -> dict[str, object]:
    """What the audit trail keeps of a device: never its token or token hash."""
    return {
        "labels": dict(device.labels or {}),
        "model_id": device.model_id,
        "revoked": device.revoked_at is not None,
        "token_issued_at": device.token_issued_at.isoformat() if device.token_issued_at else None,
    }


def authenticate(session: Session, token: str) -> Device:
    """The device holding ``token``; :class:`AuthenticationError` for anything else."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        raise AuthenticationError("not a device token")
    digest = hash_token(token)
    device = session.exec(select(Device).where(Device.token_hash == digest)).first()
    if (
        device is None
        or device.token_hash is None
        or not hmac.compare_digest(device.token_hash, digest)
    ):
        raise AuthenticationError("unknown or revoked device token")
    return device


def get_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id!r} not found")
    return device


def update_device(
    session: Session, device_id: str, patch: DeviceUpdate, *, actor: str = audit.SYSTEM_ACTOR
) -> Device:
    """Change a device's labels or the model it runs (audited ``device.update`` as ``actor``
    when anything changed)."""
    device = get_device(session, device_id)
    before = _audit_state(device)
    if patch.labels is not None:
        device.labels = dict(patch.labels)
    if patch.model is not None:
        device.model_id = get_model(session, patch.model).id
    session.add(device)
    session.flush()
    after = _audit_state(device)
    if after != before:
        audit.record(session, actor=actor, action="device.update", target=f"device/{device_id}",
                     before=before, after=after)
    return device


def revoke_device(
    session: Session, device_id: str, *, actor: str = audit.SYSTEM_ACTOR
) -> Device:
    """Invalidate a device's token; the device and its telemetry stay (audited as ``actor``)."""
    device = get_device(session, device_id)
    before = _audit_state(device)
    device.token_hash = None
    device.revoked_at = utcnow()
    session.add(device)
    session.flush()
    audit.record(session, actor=actor, action="device.revoke", target=f"device/{device_id}",
                 before=before, after=_audit_state(device))
    return device


def touch(
    session: Session,
    device: Device,
    *,
    assigned_version_id: int | None = None,
    running_version_id: int | None = None,
    min_interval: timedelta = timedelta(seconds=30),
) -> bool:
    """Record that ``device`` was seen (and what it was given or runs); return whether it wrote.

    ``last_seen_at`` is written at most once per ``min_interval`` unless a version changes, so a
    fleet polling every few seconds does not turn every poll into a database write.
    """
    now = utcnow()
    changed = False
    if assigned_version_id is not None and device.assigned_version_id != assigned_version_id:
        device.assigned_version_id = assigned_version_id
        changed = True
    if running_version_id is not None and device.running_version_id != running_version_id:
        device.running_version_id = running_version_id
        changed = True
    stale = device.last_seen_at is None or now - device.last_seen_at >= min_interval
    if not (changed or stale):
        return False
    device.last_seen_at = now
    session.add(device)
    session.flush()
    return True


def list_devices(
    session: Session,
    *,
    model: str | None = None,
    seen_since: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[DevicePublic]:
    """Enrolled devices, optionally of one model or seen since a time, ordered by id."""
    where: list[sa.ColumnElement[bool]] = []
    if model is not None:
        where.append(col(Device.model_id) == get_model(session, model).id)
    if seen_since is not None:
        if seen_since.tzinfo is None:
            raise InvalidQueryError("seen_since must carry a time zone (e.g. ...T12:00:00Z)")
        where.append(col(Device.last_seen_at) >= seen_since)
    total = session.exec(select(sa.func.count()).select_from(Device).where(*where)).one()
    rows = session.exec(
        select(Device).where(*where).order_by(col(Device.id)).limit(limit).offset(offset)
    ).all()
    return Page[DevicePublic](
        items=devices_public(session, rows), total=total, limit=limit, offset=offset
    )


def devices_public(session: Session, devices: Sequence[Device]) -> list[DevicePublic]:
    """The API view of devices (model names and version numbers instead of ids)."""
    model_ids = {d.model_id for d in devices if d.model_id is not None}
    version_ids = {
        v for d in devices for v in (d.assigned_version_id, d.running_version_id) if v is not None
    }
    names: dict[int, str] = {}
    numbers: dict[int, int] = {}
    if model_ids:
        for mid, name in session.exec(
            select(Model.id, Model.name).where(col(Model.id).in_(model_ids))
        ):
            names[int(mid or 0)] = name
    if version_ids:
        for vid, number in session.exec(
            select(ModelVersion.id, ModelVersion.number).where(
                col(ModelVersion.id).in_(version_ids)
            )
        ):
            numbers[int(vid or 0)] = number
    return [
        DevicePublic(
            id=d.id,
            labels=d.labels,
            hardware=d.hardware,
            model=names.get(d.model_id) if d.model_id else None,
            assigned_version=numbers.get(d.assigned_version_id) if d.assigned_version_id else None,
            running_version=numbers.get(d.running_version_id) if d.running_version_id else None,
            enrolled_at=d.enrolled_at,
            last_seen_at=d.last_seen_at,
            revoked=d.revoked_at is not None,
        )
        for d in devices
    ]
