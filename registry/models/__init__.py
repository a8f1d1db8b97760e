"""The registry's SQLModel tables and their request/response families.

Importing this package registers every table on :data:`metadata` (the one Alembic migrates), with
the naming convention that keeps constraint names identical on SQLite and PostgreSQL.
"""

from sqlmodel import SQLModel

from registry.models.columns import NAMING_CONVENTION, JSONType, UTCDateTime, utcnow

SQLModel.metadata.naming_convention = NAMING_CONVENTION

from registry.models.alias import CANARY, PRODUCTION, SHADOW, Alias, AliasEvent  # noqa: E402
from registry.models.audit import AuditHead, AuditRecord  # noqa: E402
from registry.models.card import VersionCardNote  # noqa: E402
from registry.models.catalog import (  # noqa: E402
    Model,
    ModelCreate,
    ModelPublic,
    ModelTag,
    ModelUpdate,
)
from registry.models.device import Device, DevicePublic, DeviceUpdate  # noqa: E402
from registry.models.evidence import (  # noqa: E402
    FeedbackCreate,
    FeedbackItem,
    FeedbackResult,
    InferenceRecord,
    InferenceRecordPublic,
)
from registry.models.prediction import (  # noqa: E402
    PrecomputeRun,
    PrecomputeStatus,
    Prediction,
    PredictionPublic,
)
from registry.models.rollout import Rollout, RolloutEvent  # noqa: E402
from registry.models.serving import ServingGeneration  # noqa: E402
from registry.models.telemetry import (  # noqa: E402
    DeviceEventPublic,
    DeviceEventRecord,
    TelemetryPublic,
    TelemetryRecord,
)
from registry.models.version import (  # noqa: E402
    TRANSITIONS,
    ModelVersion,
    SigningKey,
    VersionMetric,
    VersionStatus,
    VersionStatusUpdate,
)

metadata = SQLModel.metadata

__all__ = [
    "CANARY",
    "PRODUCTION",
    "SHADOW",
    "TRANSITIONS",
    "Alias",
    "AliasEvent",
    "AuditHead",
    "AuditRecord",
    "Device",
    "DeviceEventPublic",
    "DeviceEventRecord",
    "DevicePublic",
    "DeviceUpdate",
    "FeedbackCreate",
    "FeedbackItem",
    "FeedbackResult",
    "InferenceRecord",
    "InferenceRecordPublic",
    "JSONType",
    "Model",
    "ModelCreate",
    "ModelPublic",
    "ModelTag",
    "ModelUpdate",
    "ModelVersion",
    "PrecomputeRun",
    "PrecomputeStatus",
    "Prediction",
    "PredictionPublic",
    "Rollout",
    "RolloutEvent",
    "ServingGeneration",
    "SigningKey",
    "TelemetryPublic",
    "TelemetryRecord",
    "UTCDateTime",
    "VersionCardNote",
    "VersionMetric",
    "VersionStatus",
    "VersionStatusUpdate",
    "metadata",
    "utcnow",
]
