"""The serving snapshot for inference runners (``GET /api/v1/serving/models``).

What a runner (``edgefleet server runner``, :mod:`server.runner`) needs to serve without a
database: every model's aliases, rollout salt and versions with their artifacts' digests, sizes,
URLs and signatures (:class:`edgefleet.serving.ServingSnapshot`). The caller presents a runner
key (``EDGEFLEET_SERVER_RUNNER_KEYS``, read-only: this snapshot and the artifacts of READY
versions) or an admin key. The ``ETag`` is the serving generation counter
(:mod:`registry.serving`), so polling with ``If-None-Match`` costs one tiny query and a ``304``
until a model, version or alias changes.
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, Response
from sqlmodel import Session, col

from edgefleet.serving import (
    ServingModel,
    ServingRollout,
    ServingSnapshot,
    ServingVersion,
    snapshot_etag,
)
from edgefleet.wire import ArtifactRef, VersionSignature, artifact_url
from registry.errors import AuthenticationError, PermissionDeniedError
from registry.models import Alias, Model, ModelVersion
from registry.rollouts.routing import routing_view
from registry.serving import generations
from registry.signing import key_chain
from server.api.responses import error_responses
from server.api.routes.artifacts import etag_matches
from server.api.routing import AuthFirstRoute
from server.deps import CallerDep, SessionDep
from server.security import Caller

__all__ = ["require_runner", "router"]


async def require_runner(caller: CallerDep) -> Caller:
    """A runner key or an admin key (401 without credentials, 403 for any other kind)."""
    if caller.kind in ("runner", "admin"):
        return caller
    if caller.kind == "anonymous":
        raise AuthenticationError("a runner key or an admin key is required (Bearer)")
    raise PermissionDeniedError(f"{caller.kind} credentials cannot read the serving snapshot")


RunnerDep = Annotated[Caller, Depends(require_runner)]

router = APIRouter(
    prefix="/serving",
    tags=["serving"],
    responses=error_responses(401, 403),
    route_class=AuthFirstRoute,
)


def _versions(session: Session) -> dict[int, list[ServingVersion]]:
    rows = session.execute(
        sa.select(ModelVersion).order_by(col(ModelVersion.model_id), col(ModelVersion.number))
    ).scalars().all()
    names = dict(session.execute(sa.select(col(Model.id), col(Model.name))).tuples().all())
    chains: dict[str, Any] = {}
    out: dict[int, list[ServingVersion]] = {}
    for v in rows:
        name = names[v.model_id]
        signature = None
        if v.signature and v.signing_key_id:
            if v.signing_key_id not in chains:
                chains[v.signing_key_id] = key_chain(session, v.signing_key_id)
            signature = VersionSignature(key_id=v.signing_key_id, signature=v.signature,
                                         key_chain=chains[v.signing_key_id])
        out.setdefault(v.model_id, []).append(ServingVersion(
            number=v.number,
            status=str(getattr(v.status, "value", v.status)),
            plan=ArtifactRef(url=artifact_url(name, v.number, "plan"), sha256=v.plan_sha256,
                             size=v.plan_size),
            weights=ArtifactRef(url=artifact_url(name, v.number, "weights"),
                                sha256=v.weights_sha256, size=v.weights_size),
            manifest=ArtifactRef(url=artifact_url(name, v.number, "manifest"),
                                 sha256=v.manifest_sha256, size=v.manifest_size),
            signature=signature,
        ))
    return out


def _rollout(session: Session, model: Model) -> ServingRollout | None:
    view = routing_view(session, model)
    if view is None:
        return None
    return ServingRollout(
        rollout_id=view.rollout_id, strategy=view.strategy, state=view.state, step=view.step,
        phase=view.phase, candidate=view.candidate, baseline=view.baseline, percent=view.percent,
        selectors=[None if s is None else dict(s) for s in view.selectors],
        variants=list(view.variants), shadow_rate=view.shadow_rate,
    )


def snapshot(session: Session, generation: int) -> ServingSnapshot:
    """Every model with its aliases, versions and active rollout (four queries, plus one per
    signing key and per model)."""
    models = session.execute(sa.select(Model).order_by(col(Model.name))).scalars().all()
    aliases: dict[int, dict[str, int]] = {}
    for model_id, alias, number in session.execute(
        sa.select(col(Alias.model_id), col(Alias.name), col(ModelVersion.number))
        .join(ModelVersion, col(ModelVersion.id) == col(Alias.version_id))
    ).all():
        aliases.setdefault(model_id, {})[alias] = number
    versions = _versions(session)
    return ServingSnapshot(generation=generation, models=[
        ServingModel(name=m.name, salt=m.rollout_salt or "", aliases=aliases.get(m.id or 0, {}),
                     versions=versions.get(m.id or 0, []), rollout=_rollout(session, m))
        for m in models
    ])


@router.get(
    "/models",
    response_model=ServingSnapshot,
    summary="Every model's aliases and versions, for inference runners",
    responses={304: {"description": "unchanged since the ETag given in If-None-Match"}},
)
def serving_models(
    _: RunnerDep,
    session: SessionDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    generation = generations(session)["serving"]
    etag = snapshot_etag(generation)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    body = snapshot(session, generation)
    session.commit()
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)
