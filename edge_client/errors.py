"""Exceptions of the edge agent.

Every error the agent raises derives from :class:`AgentError`, itself an
:class:`edgefleet.errors.EdgeFleetError`, so an application embedding the agent can catch either
root. Input errors are also :class:`edgefleet.errors.InputError`, the core's own input error::

    EdgeFleetError                       (edgefleet.errors)
    └── AgentError                       anything the agent cannot do
        ├── ConfigurationError           settings or local files that make the agent unusable
        │   ├── NotEnrolledError         no credentials in data_dir: run `edgefleet agent enroll`
        │   └── CredentialsError         credentials file unreadable or readable by others
        ├── ServerError                  talking to the EdgeFleet server failed
        │   ├── ServerUnavailableError   unreachable, timed out or 5xx after every retry
        │   └── ServerRejectedError      a 4xx answer (``status_code``, ``detail``)
        │       └── UnauthorizedError    401/403: bad enrolment or device token
        ├── ArtifactError                a downloaded artifact was refused; the active model stays
        │   ├── IntegrityError           size or sha256 differs from what the assignment promised
        │   ├── DownloadInterruptedError the connection ended before the last byte
        │   └── DiskFullError            no space (ENOSPC/EDQUOT/EFBIG or the free-space reserve)
        ├── ModelRejectedError           a model that would not load or answer its smoke test
        ├── ModelUnavailableError        neither a local model nor the server could answer
        ├── UnknownModelError            the named model/version is neither local nor on the server
        ├── InvalidInputError            wrong shape/dtype/content (also an ``InputError``)
        ├── StoreError                   the label store, outbox or state database failed
        │   └── StorageUnavailableError  the data folder cannot be written (read-only, degraded)
        └── NotEligibleError             the device may not train now (``reasons``)

Nothing here knows about HTTP status codes except :class:`ServerRejectedError`, which carries
the code the *server* answered; the agent's own local HTTP endpoint maps these to codes itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgefleet.errors import EdgeFleetError, InputError


class AgentError(EdgeFleetError):
    """Root of every error raised by the edge agent."""


class ConfigurationError(AgentError):
    """The agent's settings or local files make it unusable."""


class NotEnrolledError(ConfigurationError):
    """The device has no credentials yet: run ``edgefleet agent enroll`` first."""


class CredentialsError(ConfigurationError):
    """The credentials file is unreadable, malformed, or readable by other users."""


class ServerError(AgentError):
    """Talking to the EdgeFleet server failed."""


class ServerUnavailableError(ServerError):
    """The server could not be reached (connection refused, timeout, 5xx) after every retry."""


class ServerRejectedError(ServerError):
    """The server answered with a 4xx status: retrying the same request would not help.

    Parameters
    ----------
    status_code : int
        The HTTP status the server answered.
    detail : str
        The server's explanation (its ``detail`` or ``error`` field, or the raw body).
    """

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"server answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class UnauthorizedError(ServerRejectedError):
    """401/403: the enrolment or device token was refused."""


class ArtifactError(AgentError):
    """A model artifact could not be downloaded or was refused; the active model is untouched."""


class IntegrityError(ArtifactError):
    """An artifact's size or sha256 differs from what the assignment promised."""


class DownloadInterruptedError(ArtifactError):
    """The connection ended (or failed) before the whole artifact arrived."""


class DiskFullError(ArtifactError):
    """Not enough disk space to store an artifact; nothing was left half-written."""


class ModelRejectedError(AgentError):
    """A downloaded or installed model failed to load or to answer its smoke test."""


class ModelUnavailableError(AgentError):
    """No local model could answer and the server's fallback inference failed too."""


class UnknownModelError(AgentError):
    """A request named a model or version this device does not run and the server does not
    know (or, offline, that this device does not run): the local endpoint answers 404."""


class InvalidInputError(AgentError, InputError):
    """An input of the wrong shape, dtype or content; neither the device nor the server can
    answer it, so the agent does not fall back to the server for it."""


class StoreError(AgentError):
    """A local SQLite database (label store, outbox, state) could not be used."""


class StorageUnavailableError(StoreError):
    """The data folder cannot be written (read-only): nothing was stored; the local endpoint
    answers 503."""


class NotEligibleError(AgentError):
    """The device may not train now.

    Parameters
    ----------
    reasons : sequence of str
        Why not, one short sentence per failed condition.
    """

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("not eligible to train: " + "; ".join(reasons))
        self.reasons = tuple(reasons)
