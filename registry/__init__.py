"""The model registry: database models, the content-addressed artifact store, and the logic of
models, versions, aliases, lineage, devices, assignment, telemetry and search.

May import: the shared ``edgefleet`` core, sqlmodel/sqlalchemy, alembic, cryptography (signing).
Knows nothing of HTTP: its functions take a :class:`sqlmodel.Session` (and, for artifacts, an
:class:`ArtifactStore`), flush what they change and leave the commit to the caller; failures are
:class:`RegistryError` subclasses (see :mod:`registry.errors`), itself an
:class:`edgefleet.errors.EdgeFleetError`.

Modules
-------
``models``      SQLModel tables and request/response families (one module per entity)
``migrations``  Alembic scripts; run with :mod:`registry.migrate`
``store``       content-addressed artifact store (sha256 paths, atomic, never overwrites)
``catalog``     models          ``versions``  versions and status   ``publish``  verified uploads
``aliases``     aliases, history, rollback    ``assignment``  which version a device runs
``devices``     enrolment, tokens, devices    ``telemetry``   idempotent intake and queries
``search``      discovery with filters and pagination
``integrity``   artifacts verified at rest, DAMAGED versions   ``signing``  the Ed25519 version key
``predictions`` precomputed predictions
``audit``       the hash-chained audit trail: record, list, verify (``audit_chain``: hashes, verify)
``cards``       model cards (``card_lineage``: run and per-class sections; ``card_render``: pages)
"""

from registry.db import make_engine, session_scope, write_session
from registry.errors import (
    AlreadyExistsError,
    ArtifactError,
    ArtifactRejectedError,
    ArtifactTooLargeError,
    AuthenticationError,
    ConflictError,
    DigestMismatchError,
    IdempotencyConflict,
    IncompatibleSchemaError,
    InvalidQueryError,
    InvalidTransitionError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    VersionNotReadyError,
)
from registry.store import ArtifactStore

__all__ = [
    "AlreadyExistsError",
    "ArtifactError",
    "ArtifactRejectedError",
    "ArtifactStore",
    "ArtifactTooLargeError",
    "AuthenticationError",
    "ConflictError",
    "DigestMismatchError",
    "IdempotencyConflict",
    "IncompatibleSchemaError",
    "InvalidQueryError",
    "InvalidTransitionError",
    "NotFoundError",
    "PermissionDeniedError",
    "RegistryError",
    "VersionNotReadyError",
    "make_engine",
    "session_scope",
    "write_session",
]
