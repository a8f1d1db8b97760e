"""What every drift report shares: the immutable report base and the verdict vocabulary."""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict

Verdict = Literal["insufficient", "no_drift", "drift"]
FeatureStatus = Literal["insufficient", "ok", "drift"]


class ReportModel(BaseModel):
    """Base of the drift reports: immutable, and no field that is not declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def project(cls, source: object, **fields: Any) -> Self:
        """An instance of ``fields``, every other field read from ``source``'s same-named attribute.

        Builds the narrower views of a larger report (a window, a device, a feature, an event)
        without copying its fields one by one; validation is the constructor's, as ever.
        """
        taken = {name: getattr(source, name) for name in cls.model_fields if name not in fields}
        return cls(**taken, **fields)


def num(v: float | np.floating[Any]) -> float | None:
    """``v`` as a float, ``None`` when it is not finite (JSON has no NaN)."""
    return float(v) if np.isfinite(v) else None
