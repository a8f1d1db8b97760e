"""Exceptions of the aggregation package.

::

    FederationError                  root of every error raised by ``aggregation``
    ├── SettingsError                a run config or policy parameter that cannot be used
    │                                (unknown strategy or policy name, bounds out of range)
    ├── RoundFailed                  a round ended without a new global model
    │                                (too few valid reports, no eligible nodes, aggregation
    │                                failed); the global weights stay as they were
    ├── RunLaunchError               the controller could not start a federated run
    └── RegistryClientError          talking to the server's REST API failed
        ├── RegistryUnavailable      connection refused, timeout, 5xx after retries
        ├── RegistryRejected         the server answered 4xx (bad key, invalid body, conflict)
        │   └── RegistryNotFound     404: no such model, version, alias or route
        └── RegistryProtocolError    the answer is not what the contract says (bad JSON, digests)

A *refused update* is not an exception: :mod:`aggregation.validation` returns a verdict with the
reasons, and the round records it in its :class:`~aggregation.report.RoundReport`.
Errors of the shared core (:class:`edgefleet.errors.EdgeFleetError`, e.g. a corrupt plan) pass
through unchanged.
"""

from __future__ import annotations

from edgefleet.errors import EdgeFleetError


class FederationError(EdgeFleetError):
    """Root of every error raised by the aggregation package."""


class SettingsError(FederationError, ValueError):
    """A run-config value or policy parameter is unknown or out of its range."""


class RoundFailed(FederationError):
    """A round produced no new global model; the previous global weights stay in force.

    Parameters
    ----------
    server_round : int
        The round that failed.
    reason : str
        Why, in words (e.g. ``"2 valid reports < min_reports=3"``).
    """

    def __init__(self, server_round: int, reason: str) -> None:
        super().__init__(f"round {server_round} failed: {reason}")
        self.server_round = server_round
        self.reason = reason


class RunLaunchError(FederationError):
    """Starting a federated run failed (``flwr run`` missing, refused or timed out)."""


class RegistryClientError(FederationError):
    """A call to the server's REST API did not succeed.

    Parameters
    ----------
    message : str
        What went wrong.
    status_code : int or None (default: None)
        The HTTP status, when the server answered at all.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RegistryUnavailable(RegistryClientError):
    """The server could not be reached or kept failing (connection error, timeout, 5xx)."""


class RegistryRejected(RegistryClientError):
    """The server refused the request (4xx): wrong admin key, invalid body, conflict."""


class RegistryNotFound(RegistryRejected):
    """The model, version, alias or route does not exist (404)."""


class RegistryProtocolError(RegistryClientError):
    """The server's answer does not follow the contract (unparsable body, digest mismatch)."""


__all__ = [
    "FederationError",
    "RegistryClientError",
    "RegistryNotFound",
    "RegistryProtocolError",
    "RegistryRejected",
    "RegistryUnavailable",
    "RoundFailed",
    "RunLaunchError",
    "SettingsError",
]
