"""Search and discovery of models and versions.

Filters combine with AND. Metric thresholds are written ``name<op>value`` with ``op`` one of
``>=``, ``>``, ``<=``, ``<``, ``=`` (for example ``accuracy>=0.9``); a version without the metric
does not match a threshold on it. Results are paginated (``limit``/``offset``, with the total).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from edgefleet.wire import Page, VersionInfo
from registry.catalog import models_public
from registry.errors import InvalidQueryError
from registry.models import (
    Alias,
    Model,
    ModelPublic,
    ModelTag,
    ModelVersion,
    VersionMetric,
    VersionStatus,
)
from registry.versions import versions_info

__all__ = ["MAX_LIMIT", "MetricFilter", "parse_metric_filter", "search_models", "search_versions"]

MAX_LIMIT = 500
_FILTER = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_.:-]{0,63})\s*(>=|<=|>|<|==|=)\s*(\S+)\s*$")
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "=": operator.eq,
    "==": operator.eq,
}


@dataclass(frozen=True)
class MetricFilter:
    """A threshold on one metric, e.g. ``MetricFilter("accuracy", ">=", 0.9)``."""

    name: str
    op: str
    value: float

    def clause(self) -> sa.ColumnElement[bool]:
        """``EXISTS`` a metric row of the version satisfying the threshold."""
        return sa.exists().where(
            col(VersionMetric.version_id) == col(ModelVersion.id),
            col(VersionMetric.name) == self.name,
            _OPS[self.op](col(VersionMetric.value), self.value),
        )


def parse_metric_filter(text: str) -> MetricFilter:
    """Parse ``"accuracy>=0.9"``; :class:`InvalidQueryError` when malformed."""
    match = _FILTER.match(text)
    if match is None:
        raise InvalidQueryError(
            f"invalid metric filter {text!r}: write name<op>value, e.g. accuracy>=0.9"
        )
    name, op, raw = match.groups()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidQueryError(
            f"invalid metric filter {text!r}: {raw!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise InvalidQueryError(f"invalid metric filter {text!r}: the threshold is not finite")
    return MetricFilter(name, op, value)


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQueryError(f"limit must be between 1 and {MAX_LIMIT}")
    if offset < 0:
        raise InvalidQueryError("offset must not be negative")


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def _model_filters(
    task: str | None, tag: str | None, name: str | None, alias: str | None
) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if task is not None:
        where.append(col(Model.task) == task)
    if name is not None:
        where.append(sa.func.lower(col(Model.name)).like(_like(name), escape="\\"))
    if tag is not None:
        where.append(
            sa.exists().where(col(ModelTag.model_id) == col(Model.id), col(ModelTag.tag) == tag)
        )
    if alias is not None:
        where.append(
            sa.exists().where(col(Alias.model_id) == col(Model.id), col(Alias.name) == alias)
        )
    return where


def search_models(
    session: Session,
    *,
    task: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    alias: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[ModelPublic]:
    """Models by task, tag, name (case-insensitive substring) and alias, ordered by name."""
    _check_page(limit, offset)
    where = _model_filters(task, tag, name, alias)
    total = session.exec(select(sa.func.count()).select_from(Model).where(*where)).one()
    rows = session.exec(
        select(Model).where(*where).order_by(col(Model.name)).limit(limit).offset(offset)
    ).all()
    return Page[ModelPublic](
        items=models_public(session, rows), total=total, limit=limit, offset=offset
    )


def search_versions(
    session: Session,
    *,
    model: str | None = None,
    task: str | None = None,
    tag: str | None = None,
    alias: str | None = None,
    status: VersionStatus | None = None,
    metrics: Sequence[str | MetricFilter] = (),
    federated_run: str | None = None,
    sort: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[VersionInfo]:
    """Versions across models, newest first (or best first by the metric named in ``sort``).

    Sorting by a metric keeps the versions that lack it: they come last (newest first among
    them), so sorting never changes which versions match, only their order.

    ``alias`` keeps the versions an alias of that name points at; ``model`` matches the name
    exactly; ``task`` and ``tag`` are the model's.
    """
    _check_page(limit, offset)
    filters = [m if isinstance(m, MetricFilter) else parse_metric_filter(m) for m in metrics]
    where = _model_filters(task, tag, None, None)
    if model is not None:
        where.append(col(Model.name) == model)
    if status is not None:
        where.append(col(ModelVersion.status) == status)
    if federated_run is not None:
        where.append(col(ModelVersion.federated_run) == federated_run)
    if alias is not None:
        where.append(
            sa.exists().where(
                col(Alias.version_id) == col(ModelVersion.id), col(Alias.name) == alias
            )
        )
    where.extend(f.clause() for f in filters)
    base = select(ModelVersion).join(Model, col(Model.id) == col(ModelVersion.model_id))
    count = (
        select(sa.func.count())
        .select_from(ModelVersion)
        .join(Model, col(Model.id) == col(ModelVersion.model_id))
        .where(*where)
    )
    if sort:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$", sort):
            raise InvalidQueryError(f"invalid sort metric {sort!r}")
        # An outer join: versions without the metric stay in the results, after the others.
        base = base.outerjoin(
            VersionMetric,
            sa.and_(
                col(VersionMetric.version_id) == col(ModelVersion.id),
                col(VersionMetric.name) == sort,
            ),
        )
        order: list[sa.UnaryExpression[Any]] = [
            col(VersionMetric.value).desc().nulls_last(),
            col(ModelVersion.id).desc(),
        ]
    else:
        order = [col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc()]
    total = session.exec(count).one()
    rows = session.exec(base.where(*where).order_by(*order).limit(limit).offset(offset)).all()
    return Page[VersionInfo](
        items=versions_info(session, rows), total=total, limit=limit, offset=offset
    )
