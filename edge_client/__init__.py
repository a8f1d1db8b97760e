"""The edge agent installed on each device: on-device inference, safe model updates, the local
store of labelled examples, the telemetry outbox, eligibility to train, and the Flower ClientApp.

May import: the shared ``edgefleet`` core, numpy, httpx, flwr's client side, prometheus_client, a
TFLite interpreter (through the core's runtime). Never tensorflow, fastapi, sqlmodel or scipy
(``tests/test_imports.py`` checks every import statement, and what each entry point loads in a
fresh interpreter).

Everything public is importable from here::

    from edge_client import Agent, AgentSettings
    agent = Agent(AgentSettings(data_dir="/var/lib/edgefleet"))
    agent.predict(x)                       # Prediction(probs, classes, path, model, version, …)

Modules: ``agent`` (the agent), ``installs`` (its memory of refused and retried installs),
``status`` (``edgefleet agent status``), ``inference`` (local/fallback routing), ``models``
(install, switch, rollback), ``download`` (verified downloads), ``client`` (the server's REST API),
``credentials`` (enrolment), ``store`` (labelled examples), ``outbox`` and ``telemetry``
(reports), ``eligibility`` (may it train?), ``http_api`` (the local endpoint; its V2 JSON is the
core's codec, :mod:`edgefleet.v2`), ``metrics`` (Prometheus), ``service`` (systemd units,
upgrades), ``settings``, ``storage`` (atomic files, SQLite), ``errors``; ``flower_client`` (the
Flower ClientApp — imported only on demand, since it loads Flower) and ``cli``. The imports go
one way: ``agent`` builds the ``inference`` router and the ``http_api`` server and hands them
what they use (stores, callables, a protocol), so neither imports the agent.

Names are resolved lazily (PEP 562): ``import edge_client`` costs nothing, so ``edgefleet --help``
(whose CLI imports ``edge_client.cli``) does not load numpy, httpx or a model runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_client.agent import Agent, collect_status
    from edge_client.client import AssignmentPoll, ServerClient
    from edge_client.credentials import Credentials, enroll
    from edge_client.eligibility import (
        DeviceConditions,
        DeviceEligibility,
        EligibilityPolicy,
        EligibilityProvider,
        EligibilityStatus,
        LinuxProbes,
        SimulatedEligibility,
        should_continue,
    )
    from edge_client.errors import (
        AgentError,
        ArtifactError,
        ConfigurationError,
        CredentialsError,
        DiskFullError,
        DownloadInterruptedError,
        IntegrityError,
        InvalidInputError,
        ModelRejectedError,
        ModelUnavailableError,
        NotEligibleError,
        NotEnrolledError,
        ServerError,
        ServerRejectedError,
        ServerUnavailableError,
        StoreError,
        UnauthorizedError,
    )
    from edge_client.http_api import LocalServer
    from edge_client.inference import Prediction
    from edge_client.models import ActiveModel, InstalledVersion, ModelManager
    from edge_client.outbox import Outbox, OutboxEntry
    from edge_client.settings import AgentSettings
    from edge_client.smoke import smoke_test
    from edge_client.store import LabelStore
    from edge_client.telemetry import DrainResult, Telemetry

_EXPORTS: dict[str, str] = {
    "ActiveModel": "edge_client.models",
    "Agent": "edge_client.agent",
    "AgentError": "edge_client.errors",
    "AgentSettings": "edge_client.settings",
    "ArtifactError": "edge_client.errors",
    "AssignmentPoll": "edge_client.client",
    "ConfigurationError": "edge_client.errors",
    "Credentials": "edge_client.credentials",
    "CredentialsError": "edge_client.errors",
    "DeviceConditions": "edge_client.eligibility",
    "DeviceEligibility": "edge_client.eligibility",
    "DiskFullError": "edge_client.errors",
    "DownloadInterruptedError": "edge_client.errors",
    "DrainResult": "edge_client.telemetry",
    "EligibilityPolicy": "edge_client.eligibility",
    "EligibilityProvider": "edge_client.eligibility",
    "EligibilityStatus": "edge_client.eligibility",
    "InstalledVersion": "edge_client.models",
    "IntegrityError": "edge_client.errors",
    "InvalidInputError": "edge_client.errors",
    "LabelStore": "edge_client.store",
    "LinuxProbes": "edge_client.eligibility",
    "LocalServer": "edge_client.http_api",
    "ModelManager": "edge_client.models",
    "ModelRejectedError": "edge_client.errors",
    "ModelUnavailableError": "edge_client.errors",
    "NotEligibleError": "edge_client.errors",
    "NotEnrolledError": "edge_client.errors",
    "Outbox": "edge_client.outbox",
    "OutboxEntry": "edge_client.outbox",
    "Prediction": "edge_client.inference",
    "ServerClient": "edge_client.client",
    "ServerError": "edge_client.errors",
    "ServerRejectedError": "edge_client.errors",
    "ServerUnavailableError": "edge_client.errors",
    "SimulatedEligibility": "edge_client.eligibility",
    "StoreError": "edge_client.errors",
    "Telemetry": "edge_client.telemetry",
    "UnauthorizedError": "edge_client.errors",
    "collect_status": "edge_client.agent",
    "enroll": "edge_client.credentials",
    "should_continue": "edge_client.eligibility",
    "smoke_test": "edge_client.smoke",
}

__all__ = [
    "ActiveModel",
    "Agent",
    "AgentError",
    "AgentSettings",
    "ArtifactError",
    "AssignmentPoll",
    "ConfigurationError",
    "Credentials",
    "CredentialsError",
    "DeviceConditions",
    "DeviceEligibility",
    "DiskFullError",
    "DownloadInterruptedError",
    "DrainResult",
    "EligibilityPolicy",
    "EligibilityProvider",
    "EligibilityStatus",
    "InstalledVersion",
    "IntegrityError",
    "InvalidInputError",
    "LabelStore",
    "LinuxProbes",
    "LocalServer",
    "ModelManager",
    "ModelRejectedError",
    "ModelUnavailableError",
    "NotEligibleError",
    "NotEnrolledError",
    "Outbox",
    "OutboxEntry",
    "Prediction",
    "ServerClient",
    "ServerError",
    "ServerRejectedError",
    "ServerUnavailableError",
    "SimulatedEligibility",
    "StoreError",
    "Telemetry",
    "UnauthorizedError",
    "collect_status",
    "enroll",
    "should_continue",
    "smoke_test",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
