"""Precomputed predictions: ``GET /api/v1/models/{m}/predictions/{key}``.

Answers from the prediction store (:mod:`registry.predictions`, filled by ``edgefleet server
precompute``), never by running the model. Without ``version`` or ``alias`` the ``production``
alias answers, and it is resolved on every lookup: once the alias moves to a version that was
precomputed beforehand, lookups answer with that version's predictions. The response names the
version that computed the prediction (and the alias followed). 404 when the model, version,
alias or the prediction of that version for that key does not exist; 409 for a version that is
not READY. Callers need a device token, an admin key or an inference key, as for V2 inference
(unless the server runs with ``public_inference``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from edgefleet.bounds import CleanLine
from edgefleet.wire import ALIAS_PATTERN
from registry.models import PredictionPublic
from registry.models.prediction import MAX_KEY_LENGTH
from registry.predictions import get_prediction
from server.api.responses import CALLER_ERRORS, error_responses
from server.api.routes.inference import require_inference_caller
from server.deps import ModelPath, SessionDep, VersionQuery

router = APIRouter(
    prefix="/models/{model}/predictions",
    tags=["predictions"],
    responses={**CALLER_ERRORS, **error_responses(404, 409)},
    dependencies=[Depends(require_inference_caller)],
)


@router.get("/{key}", response_model=PredictionPublic, summary="A precomputed prediction")
def read_prediction(
    model: ModelPath,
    key: Annotated[CleanLine, Path(max_length=MAX_KEY_LENGTH, description="an entity key")],
    session: SessionDep,
    version: VersionQuery = None,
    alias: Annotated[
        str | None,
        Query(pattern=ALIAS_PATTERN, description="the version this alias names (production)"),
    ] = None,
) -> PredictionPublic:
    return get_prediction(session, model, key, version=version, alias=alias)
