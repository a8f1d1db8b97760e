"""The model card of a version on the wire: what it is for, what it is, where it came from, how
well it does, how it reached production, and what it should not be trusted with.

Served by ``GET /api/v1/models/{m}/versions/{v}/card`` (this JSON, or rendered as Markdown or
HTML); every section is derived from what the registry already stores except
``limitations``, which an operator writes (``PUT .../card/limitations``). A figure the registry
does not have is ``None`` (or an empty list), never a guess.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CardClass",
    "CardDeviceAccuracy",
    "CardEvaluation",
    "CardFederatedRun",
    "CardIntendedUse",
    "CardLineage",
    "CardPlan",
    "CardPromotion",
    "CardRollout",
    "CardRound",
    "ModelCard",
]


class _Card(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CardIntendedUse(_Card):
    task: str
    description: str = ""
    labels: list[str] = Field(default_factory=list)
    n_features: int
    feature_names: list[str] = Field(default_factory=list)


class CardPlan(_Card):
    architecture: dict[str, Any] = Field(default_factory=dict)
    parameters: int
    plan_sha256: str
    plan_bytes: int
    weights_bytes: int
    built_with: dict[str, str] = Field(default_factory=dict)
    signed_by: str | None = None


class CardRound(_Card):
    version: int
    round: int | None
    clients: int | None
    holdout_accuracy: float | None = None


class CardFederatedRun(_Card):
    run: str
    round: int | None
    rounds: list[CardRound] = Field(description="the run's published rounds, in order")
    participants_this_round: int | None = None
    participations: int = Field(description="client updates accepted over the run's rounds")
    distinct_participants: int | None = Field(
        default=None, description="distinct Flower nodes accepted over the rounds (when recorded)"
    )
    strategy: str | None = None
    started_by: str | None = None
    started_at: datetime | None = None
    ended: str | None = Field(default=None, description="the run's outcome once it ended")
    trigger: dict[str, Any] | None = Field(
        default=None, description="the fleet drift the run started on (run.start audit record)"
    )
    round_drift: dict[str, Any] | None = Field(
        default=None, description="the clients' merged drift summary of this round (n, labels)"
    )


class CardLineage(_Card):
    kind: Literal["authored", "federated"]
    parent_version: int | None = None
    training_data_ref: str | None = None
    created_by: str
    created_at: datetime
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    federated: CardFederatedRun | None = None


class CardDeviceAccuracy(_Card):
    version: int
    devices: int
    labelled: int
    correct: int
    accuracy: float | None
    feedback_labelled: int = 0
    feedback_accuracy: float | None = None


class CardClass(_Card):
    label: str
    training_examples: int | None = None
    device_labelled: int | None = None
    device_accuracy: float | None = None
    device_predictions: int | None = None
    rest_predictions: int | None = None
    rest_labelled: int | None = None
    rest_accuracy: float | None = None


class CardEvaluation(_Card):
    holdout: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    devices: list[CardDeviceAccuracy] = Field(
        default_factory=list, description="devices' labelled accuracy, this version and ancestors"
    )
    per_class: list[CardClass] = Field(default_factory=list)


class CardRollout(_Card):
    id: int
    strategy: str
    state: str
    created_by: str
    created_at: datetime
    finished_at: datetime | None = None
    approved_by: list[str] = Field(default_factory=list)
    promoted_by: str | None = None


class CardPromotion(_Card):
    rollouts: list[CardRollout] = Field(default_factory=list)
    alias_moves: list[dict[str, Any]] = Field(
        default_factory=list, description="moves of any alias onto this version (who, when, why)"
    )
    production_since: datetime | None = None


class ModelCard(_Card):
    model: str
    version: int
    status: str
    generated_at: datetime
    intended_use: CardIntendedUse
    plan: CardPlan
    lineage: CardLineage
    evaluation: CardEvaluation
    drift_reference: dict[str, Any] | None = None
    promotion: CardPromotion
    limitations: str = ""
    limitations_by: str | None = None
    limitations_at: datetime | None = None
