"""The audit trail's hash chain (:mod:`registry.audit`): each record's hash, and verification.

A record's hash (:func:`record_hash`) is the sha256 of its canonical JSON, which includes the
previous record's hash; :func:`verify` walks the chain in ``seq`` order and names every record
that was altered, removed or inserted, and a chain head that does not match the newest record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from registry.models.audit import AUDIT_HEAD_ID, GENESIS_HASH, AuditHead, AuditRecord

__all__ = ["AuditProblem", "VerifyReport", "hash_of", "record_hash", "verify"]

_VERIFY_BATCH = 1000


def record_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    request_id: str | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str | None,
    prev_hash: str,
) -> str:
    """The sha256 (hex) of a record's canonical JSON (sorted keys, UTC microsecond time)."""
    body = {
        "seq": seq,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "target": target,
        "request_id": request_id,
        "before": before,
        "after": after,
        "reason": reason,
        "prev_hash": prev_hash,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def hash_of(row: AuditRecord) -> str:
    """The hash ``row``'s content should have (:func:`record_hash` of its fields)."""
    return record_hash(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        request_id=row.request_id,
        before=row.before,
        after=row.after,
        reason=row.reason,
        prev_hash=row.prev_hash,
    )


@dataclass(frozen=True)
class AuditProblem:
    """One break in the chain: ``kind`` is ``altered``, ``missing``, ``broken_link`` or ``head``."""

    seq: int
    kind: str
    detail: str


@dataclass
class VerifyReport:
    """What :func:`verify` found: records checked, the head, and every problem."""

    checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(session: Session) -> VerifyReport:
    """Walk the whole chain in ``seq`` order and report every altered or removed record.

    An *altered* record no longer hashes to its stored hash; a *missing* one leaves a gap in
    ``seq`` (or, at the end, a head that names a later record than the last one stored); a
    *broken link* is a ``prev_hash`` that is not the previous record's hash.
    """
    head = session.get(AuditHead, AUDIT_HEAD_ID)
    report = VerifyReport(
        head_seq=head.seq if head else 0, head_hash=head.hash if head else GENESIS_HASH
    )
    prev_seq, prev_hash = 0, GENESIS_HASH
    while True:
        stmt = (
            select(AuditRecord)
            .where(col(AuditRecord.seq) > prev_seq)
            .order_by(col(AuditRecord.seq))
            .limit(_VERIFY_BATCH)
        )
        rows = list(session.exec(stmt))
        for row in rows:
            _check_row(report, row, prev_seq, prev_hash)
            prev_seq, prev_hash = row.seq, row.hash
            report.checked += 1
        if len(rows) < _VERIFY_BATCH:
            break
    _check_tail(report, head, prev_seq, prev_hash)
    return report


def _check_row(report: VerifyReport, row: AuditRecord, prev_seq: int, prev_hash: str) -> None:
    if row.seq != prev_seq + 1:
        gap = f"{prev_seq + 1}–{row.seq - 1}" if row.seq - 1 > prev_seq + 1 else str(prev_seq + 1)
        report.problems.append(AuditProblem(prev_seq + 1, "missing", f"record(s) {gap} removed"))
    elif row.prev_hash != prev_hash:
        report.problems.append(
            AuditProblem(row.seq, "broken_link", "prev_hash is not the previous record's hash")
        )
    if hash_of(row) != row.hash:
        report.problems.append(
            AuditProblem(row.seq, "altered", "content no longer matches its hash")
        )


def _check_tail(
    report: VerifyReport, head: AuditHead | None, last_seq: int, last_hash: str
) -> None:
    if head is None:
        if last_seq:
            report.problems.append(AuditProblem(last_seq, "head", "chain head row is missing"))
        return
    if head.seq > last_seq:
        report.problems.append(
            AuditProblem(last_seq + 1, "missing", f"record(s) {last_seq + 1}–{head.seq} removed")
        )
    elif head.seq != last_seq or head.hash != last_hash:
        report.problems.append(
            AuditProblem(last_seq, "head", "chain head does not match the newest record")
        )
