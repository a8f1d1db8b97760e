"""The settings of one federated run, read from Flower's run config.

Flower passes ``[tool.flwr.app.config]`` of the app's ``pyproject.toml`` (overridden by
``flwr run --run-config "k=v ..."``) to the ServerApp as ``context.run_config``, nested tables
flattened with dots. The settings, their keys and their defaults are defined once, in
:mod:`edgefleet.run_settings`; this module only says them in the aggregation's terms: a run
config that cannot be used is a :class:`~aggregation.errors.SettingsError`, and
:func:`knobs_for` picks the fields a settings class of this package shares with the run settings
(how :mod:`aggregation.server_app` builds its round and steering settings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

from aggregation.errors import SettingsError
from edgefleet import run_settings as core

__all__ = ["ADMIN_KEY_ENV", "STRATEGY_PARAMS", "RunSettings", "knobs_for"]

ADMIN_KEY_ENV = core.ADMIN_KEY_ENV
STRATEGY_PARAMS = core.STRATEGY_PARAMS


class RunSettings(core.RunSettings):
    """:class:`edgefleet.run_settings.RunSettings` whose :meth:`from_run_config` refuses a run
    config that cannot be used with :class:`~aggregation.errors.SettingsError`."""

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any], *,
                        env: Mapping[str, str] | None = None) -> Self:
        try:
            return super().from_run_config(config, env=env)
        except core.RunConfigError as exc:
            raise SettingsError(str(exc)) from exc


def knobs_for(cls: type[Any], settings: core.RunSettings) -> dict[str, Any]:
    """The values of ``settings`` for the fields of dataclass ``cls`` that are run settings too
    (same name, same meaning)."""
    shared = [f.name for f in dataclasses.fields(cls) if f.name in core.RunSettings.model_fields]
    return {name: getattr(settings, name) for name in shared}
