"""What one runner process holds: settings, the REST source, the serving table, the pool."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.inference.pool import RuntimePool
from server.inference.table import ServingTable
from server.runner.settings import RunnerSettings
from server.runner.source import RestSource
from server.security import NamedKey

__all__ = ["RunnerState"]


@dataclass
class RunnerState:
    """Per-process resources of a runner (:func:`server.runner.app.create_runner_app`)."""

    settings: RunnerSettings
    source: RestSource
    table: ServingTable
    pool: RuntimePool
    inference_keys: list[NamedKey] = field(default_factory=list)
    warmed: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        """Serving: a snapshot is held, the configured models are loaded, no drain started."""
        return self.source.ready and self.warmed and not self.draining
