"""The dashboard's audit panel and model-card page (the data; the routes are in
:mod:`server.api.routes.dashboard`).

:func:`audit_panel` returns the newest records (optionally of one action family) with the chain
head; :func:`verify_panel` walks the whole chain (on the operator's request only: its cost grows
with the trail); :func:`card_page` is a version's card as HTML (:mod:`registry.card_render`).
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from registry import audit
from registry.card_render import to_html
from registry.cards import build_card
from registry.models import AuditHead
from registry.models.audit import AUDIT_HEAD_ID, GENESIS_HASH

__all__ = ["CARD_CSP", "audit_panel", "card_page", "verify_panel"]

#: The card page has one inline style sheet and nothing else.
CARD_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def audit_panel(session: Session, *, limit: int = 50, action: str | None = None
                ) -> dict[str, Any]:
    """The newest ``limit`` records (newest first) and the chain head."""
    rows = audit.list_records(session, audit.AuditQuery(action=action, limit=limit,
                                                        newest_first=True))
    head = session.get(AuditHead, AUDIT_HEAD_ID)
    return {
        "head": {"seq": head.seq if head else 0, "hash": head.hash if head else GENESIS_HASH},
        "records": [r.model_dump(mode="json", exclude={"id"}) for r in rows],
    }


def verify_panel(session: Session) -> dict[str, Any]:
    """The result of walking the chain, JSON-ready."""
    report = audit.verify(session)
    return {"ok": report.ok, "checked": report.checked, "head_seq": report.head_seq,
            "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail}
                         for p in report.problems]}


def card_page(session: Session, model: str, version: int) -> str:
    """The HTML model card of ``model`` ``version``."""
    return to_html(build_card(session, model, version))
