"""The evidence on one model version in a time window: what rollout guards decide on.

:func:`version_evidence` gathers, for ``model`` ``version`` in ``[since, until)`` (optionally
only from ``device_ids``, and for the REST path only from one rollout ``variant``), everything
the server knows, with aggregate queries only:

* the **REST path** (the inference log, ``inference_record``): requests (records with
  ``row_index`` 0), errors (status >= 400) and server errors (``server_errors``: the part of
  them with status >= 500), latency p50/p99 (nearest rank, upper edge of the
  2 % bucket, as :mod:`server.evidence.monitor`), the predicted-class histogram of answered
  instances, and labelled/correct instances from REST feedback. With ``device_ids`` only
  requests whose caller is one of those devices (``device:<id>``) count.
* the **devices** (telemetry reports of this version whose window *ends* in the window): the
  reporting devices, local inferences, fallbacks and local-model errors (summed), the
  predicted-class histogram of their drift summaries (class indices), and the labelled accuracy
  of the version on each device's own labelled examples: the device's *latest* local
  evaluation in the window (each evaluation scores the same stored examples again, so summing
  them would count examples twice): ``device_labelled`` is the sum of those evaluations'
  ``n_examples``, ``device_correct`` of ``round(accuracy · n)``; ``device_evals`` keeps them
  per device (``{device id: (labelled, correct)}``) for comparisons on the same devices.
* **shadow** figures: rows where devices ran this version beside their active one
  (``shadow_n``), how many agreed on the class (``shadow_agree``), and the summed confidence
  difference (shadow minus active), from reports of any version whose window ends in the window.
* **REST shadow** pairs: each answered instance this version gave as the REST shadow (records
  with ``variant`` ``"shadow"``, request id ``<id>:shadow``, created in the window, from
  ``device_ids`` when given; ``variant=`` does not apply) joined with production's answered
  instance of the same request and row (request id ``<id>``): ``rest_shadow_n`` pairs,
  ``rest_shadow_agree`` with the same predicted label, ``rest_shadow_confidence_delta_sum`` of
  shadow minus production confidence. A shadow run that failed, or whose production record is
  not written (or failed), is no pair. One query: the window's shadow records come from
  ``ix_inference_record_model_created_at`` and each probes production's row through the
  unique ``(request_id, row_index)`` index (the production id is computed from the shadow's).
* **device events** about this version (:mod:`registry.device_events`) by kind, summing
  ``count``: ``switch``, ``smoke_failed``, ``refused``, ``crash``, ``rollback``.

Counts that saw nothing are 0 and rates ``None``: a guard must treat too little data as "not
yet", never as a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from registry.catalog import get_model
from registry.device_events import event_counts
from registry.evidence import TABLE, bucket_upper_ms
from registry.models import TelemetryRecord
from registry.versions import get_version

#: The rollout variant, and request id suffix, of the REST shadow's records
#: (as :mod:`server.inference.answer` logs them).
SHADOW_VARIANT = "shadow"
_SHADOW_SUFFIX = f":{SHADOW_VARIANT}"

__all__ = ["SHADOW_VARIANT", "VersionEvidence", "version_evidence"]


@dataclass(frozen=True)
class VersionEvidence:
    """The evidence on one version (see the module notes for each figure's definition)."""

    model: str
    version: int
    since: datetime
    until: datetime | None
    device_ids: tuple[str, ...] | None = None
    variant: str | None = None
    # the REST path
    requests: int = 0
    errors: int = 0
    server_errors: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    feedback_labelled: int = 0
    feedback_correct: int = 0
    predictions: dict[str, int] = field(default_factory=dict)
    # the devices
    devices: int = 0
    reports: int = 0
    device_inferences: int = 0
    fallbacks: int = 0
    device_errors: int = 0
    device_labelled: int = 0
    device_correct: int = 0
    device_predictions: list[int] = field(default_factory=list)
    device_evals: dict[str, tuple[int, int]] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    # this version as a shadow beside the devices' active versions
    shadow_n: int = 0
    shadow_agree: int = 0
    shadow_confidence_delta_sum: float = 0.0
    # this version as the REST shadow of production, answer by answer
    rest_shadow_n: int = 0
    rest_shadow_agree: int = 0
    rest_shadow_confidence_delta_sum: float = 0.0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def server_error_rate(self) -> float | None:
        """Requests answered with a status >= 500 per request."""
        return self.server_errors / self.requests if self.requests else None

    @property
    def feedback_accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_labelled if self.feedback_labelled else None

    @property
    def device_accuracy(self) -> float | None:
        return self.device_correct / self.device_labelled if self.device_labelled else None

    @property
    def fallback_rate(self) -> float | None:
        """Fallbacks per device inference (local + fallback)."""
        return self.fallbacks / self.device_inferences if self.device_inferences else None

    @property
    def device_error_rate(self) -> float | None:
        """Local-model failures per local inference attempt."""
        local = self.device_inferences - self.fallbacks
        return self.device_errors / local if local > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, times as ISO 8601, and the rates."""
        out = asdict(self)
        out["since"] = self.since.isoformat()
        out["until"] = self.until.isoformat() if self.until else None
        out["device_ids"] = list(self.device_ids) if self.device_ids is not None else None
        for name in ("error_rate", "server_error_rate", "feedback_accuracy", "device_accuracy",
                     "fallback_rate", "device_error_rate"):
            out[name] = getattr(self, name)
        return out


def _nearest_rank(hist: list[tuple[int, int]], q: float) -> float | None:
    n = sum(count for _, count in hist)
    if not n:
        return None
    rank, seen = max(1, math.ceil(q * n)), 0
    for bucket, count in sorted(hist):
        seen += count
        if seen >= rank:
            return bucket_upper_ms(bucket)
    return None  # pragma: no cover - the ranks always fall inside the histogram


def _rest(session: Session, model: str, version: int, since: datetime, until: datetime | None,
          device_ids: Sequence[str] | None, variant: str | None) -> dict[str, Any]:
    c = TABLE.c
    where: list[Any] = [c.model == model, c.version == version, c.created_at >= since]
    if until is not None:
        where.append(c.created_at < until)
    if device_ids is not None:
        where.append(c.caller.in_([f"device:{d}" for d in device_ids]))
    if variant is not None:
        where.append(c.variant == variant)
    hist = [(int(b), int(n)) for b, n in session.execute(
        sa.select(c.latency_bucket, sa.func.count()).where(*where, c.row_index == 0)
        .group_by(c.latency_bucket))]
    errors, server_errors = session.execute(
        sa.select(sa.func.count(), sa.func.sum(sa.case((c.status >= 500, 1), else_=0)))
        .where(*where, c.row_index == 0, c.status >= 400)
    ).one()
    predictions = {str(label): int(n) for label, n in session.execute(
        sa.select(c.label, sa.func.count())
        .where(*where, c.status < 400, c.label.is_not(None)).group_by(c.label))}
    labelled, correct = session.execute(
        sa.select(sa.func.count(), sa.func.sum(sa.case((c.label == c.true_label, 1), else_=0)))
        .where(*where, c.status < 400, c.true_label.is_not(None))
    ).one()
    return {
        "requests": sum(n for _, n in hist), "errors": int(errors),
        "server_errors": int(server_errors or 0),
        "latency_ms_p50": _nearest_rank(hist, 0.5), "latency_ms_p99": _nearest_rank(hist, 0.99),
        "predictions": dict(sorted(predictions.items())),
        "feedback_labelled": int(labelled or 0), "feedback_correct": int(correct or 0),
    }


def _devices(session: Session, version_id: int, since: datetime, until: datetime | None,
             device_ids: Sequence[str] | None) -> dict[str, Any]:
    t = TelemetryRecord
    where: list[Any] = [col(t.version_id) == version_id, col(t.window_end) >= since]
    if until is not None:
        where.append(col(t.window_end) < until)
    if device_ids is not None:
        where.append(col(t.device_id).in_(list(device_ids)))
    devices, reports, local, fallback, errors = session.execute(
        sa.select(sa.func.count(sa.distinct(col(t.device_id))), sa.func.count(),
                  sa.func.sum(col(t.inference_local)), sa.func.sum(col(t.inference_fallback)),
                  sa.func.sum(col(t.inference_errors))).where(*where)
    ).one()
    latest: dict[str, tuple[int, float]] = {}
    for device, n, accuracy in session.exec(
        select(t.device_id, t.eval_n, t.eval_accuracy)
        .where(*where, col(t.eval_n) > 0, col(t.eval_accuracy).is_not(None))
        .order_by(col(t.window_end), col(t.id))
    ).all():
        latest[device] = (int(n or 0), float(accuracy or 0.0))
    classes: list[int] = []
    for drift in session.exec(select(t.drift).where(*where, col(t.drift).is_not(None))).all():
        counts = (drift or {}).get("class_counts") or []
        if len(classes) < len(counts):
            classes += [0] * (len(counts) - len(classes))
        for i, n in enumerate(counts):
            classes[i] += int(n)
    return {
        "devices": int(devices or 0), "reports": int(reports or 0),
        "device_inferences": int(local or 0) + int(fallback or 0),
        "fallbacks": int(fallback or 0), "device_errors": int(errors or 0),
        "device_labelled": sum(n for n, _ in latest.values()),
        "device_correct": sum(round(n * a) for n, a in latest.values()),
        "device_predictions": classes,
        "device_evals": {d: (n, round(n * a)) for d, (n, a) in sorted(latest.items())},
    }


def version_evidence(
    session: Session,
    *,
    model: str,
    version: int,
    since: datetime,
    until: datetime | None = None,
    device_ids: Sequence[str] | None = None,
    variant: str | None = None,
) -> VersionEvidence:
    """The evidence on ``model`` ``version`` in ``[since, until)`` (module notes).

    Raises :class:`~registry.errors.NotFoundError` for an unknown model or version.
    """
    m = get_model(session, model)
    v = get_version(session, m, version)
    ids = tuple(device_ids) if device_ids is not None else None
    return VersionEvidence(
        model=model, version=version, since=since, until=until, device_ids=ids,
        variant=variant,
        **_rest(session, model, version, since, until, ids, variant),
        **_devices(session, v.id or 0, since, until, ids),
        events=event_counts(session, m.id or 0, version, since, until, ids),
        **_shadow(session, m.id or 0, version, since, until, ids),
        **_rest_shadow(session, model, version, since, until, ids),
    )


def _shadow(session: Session, model_id: int, version: int, since: datetime,
            until: datetime | None, device_ids: Sequence[str] | None) -> dict[str, Any]:
    t = TelemetryRecord
    where: list[Any] = [col(t.model_id) == model_id, col(t.shadow_version) == version,
                        col(t.window_end) >= since]
    if until is not None:
        where.append(col(t.window_end) < until)
    if device_ids is not None:
        where.append(col(t.device_id).in_(list(device_ids)))
    n, agree, delta = session.execute(
        sa.select(sa.func.sum(col(t.shadow_n)), sa.func.sum(col(t.shadow_agree)),
                  sa.func.sum(col(t.shadow_confidence_delta_sum))).where(*where)
    ).one()
    return {"shadow_n": int(n or 0), "shadow_agree": int(agree or 0),
            "shadow_confidence_delta_sum": float(delta or 0.0)}


def _rest_shadow(session: Session, model: str, version: int, since: datetime,
                 until: datetime | None, device_ids: Sequence[str] | None) -> dict[str, Any]:
    """The REST shadow pairs of ``version`` (module notes): one join, both sides answered."""
    s, p = TABLE.alias("shadow"), TABLE.alias("production")
    production_id = sa.func.substr(s.c.request_id, 1,
                                   sa.func.length(s.c.request_id) - len(_SHADOW_SUFFIX))
    where: list[Any] = [s.c.model == model, s.c.version == version,
                        s.c.variant == SHADOW_VARIANT, s.c.created_at >= since,
                        s.c.request_id.like(f"%{_SHADOW_SUFFIX}"),
                        s.c.status < 400, s.c.label.is_not(None),
                        p.c.status < 400, p.c.label.is_not(None),
                        p.c.variant.is_distinct_from(SHADOW_VARIANT)]
    if until is not None:
        where.append(s.c.created_at < until)
    if device_ids is not None:
        where.append(s.c.caller.in_([f"device:{d}" for d in device_ids]))
    n, agree, delta = session.execute(
        sa.select(sa.func.count(),
                  sa.func.sum(sa.case((s.c.label == p.c.label, 1), else_=0)),
                  sa.func.sum(s.c.confidence - p.c.confidence))
        .select_from(s.join(p, sa.and_(p.c.request_id == production_id,
                                       p.c.row_index == s.c.row_index,
                                       p.c.model == s.c.model)))
        .where(*where)
    ).one()
    return {"rest_shadow_n": int(n or 0), "rest_shadow_agree": int(agree or 0),
            "rest_shadow_confidence_delta_sum": float(delta or 0.0)}
