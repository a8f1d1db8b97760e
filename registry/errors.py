"""Exceptions of the registry.

::

    RegistryError
    ├── NotFoundError               a model, version, alias, device or artifact does not exist
    ├── ConflictError               the request contradicts the registry's current state
    │   ├── AlreadyExistsError      a model (or other unique thing) of that name exists
    │   ├── VersionNotReadyError    an alias or assignment onto a version that is not READY
    │   ├── InvalidTransitionError  a status change the version life cycle does not allow
    │   ├── IncompatibleSchemaError a new version whose input/output differ from the model's
    │   └── IdempotencyConflict     a reused idempotency key carrying a different report
    ├── ArtifactError               an uploaded or stored artifact is unusable
    │   ├── DigestMismatchError     the bytes do not hash to the declared sha256
    │   ├── ArtifactTooLargeError   more bytes than the configured limit
    │   ├── ArtifactRejectedError   the plan does not load, the manifest or weights do not match it
    │   └── DamagedArtifactError    a stored artifact no longer matches its digest or signature
    ├── InvalidQueryError           a malformed filter, threshold or argument
    ├── AuthenticationError         an unknown enrolment token or device token
    └── PermissionDeniedError       a device reaching for what it was not assigned

The registry knows nothing about HTTP; ``server.errors`` maps each class to a status code.
"""

from __future__ import annotations

from edgefleet.errors import EdgeFleetError


class RegistryError(EdgeFleetError):
    """Root of every error raised by the registry."""


class NotFoundError(RegistryError):
    """A model, version, alias, device or artifact does not exist."""


class ConflictError(RegistryError):
    """The request contradicts the registry's current state."""


class AlreadyExistsError(ConflictError):
    """Something with that unique name already exists."""


class VersionNotReadyError(ConflictError):
    """An alias or an assignment onto a version whose status is not READY."""


class InvalidTransitionError(ConflictError):
    """A version status change that the life cycle does not allow."""


class IncompatibleSchemaError(ConflictError):
    """A version whose input or output schema differs from the model's."""


class IdempotencyConflict(ConflictError):
    """An idempotency key reused for a report with a different body."""


class ArtifactError(RegistryError):
    """An uploaded or stored artifact is unusable."""


class DigestMismatchError(ArtifactError):
    """The bytes received do not hash to the sha256 the client declared."""


class ArtifactTooLargeError(ArtifactError):
    """An artifact (or an upload as a whole) exceeds the configured size limit."""


class ArtifactRejectedError(ArtifactError):
    """The plan does not load, or the manifest or the weights do not belong to it."""


class DamagedArtifactError(ArtifactError):
    """A stored artifact no longer hashes to its digest (or its version's signature fails):
    the version is marked DAMAGED and never served."""


class InvalidQueryError(RegistryError):
    """A malformed search filter, metric threshold or argument."""


class AuthenticationError(RegistryError):
    """An enrolment token or a device token that the registry does not know."""


class PermissionDeniedError(RegistryError):
    """A caller reaching for something outside its scope."""
