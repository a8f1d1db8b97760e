"""Version signing: the registry's Ed25519 key, its public keys in the database, rotation.

The **private key** lives in one PEM file (PKCS#8, mode 0600, in a directory of mode 0700) named
by the server setting ``signing_key_path`` (``EDGEFLEET_SERVER_SIGNING_KEY_PATH``); it must lie
outside the artifact store, so whoever can write the store cannot sign. It is created on first
use. Every **public key** the registry ever signed with is a :class:`~registry.models.SigningKey`
row, never deleted, so every old signature stays verifiable.

**Rotation** (``edgefleet server keys rotate``, :func:`rotate`): a new key is generated, the
current key *endorses* it (signs its :func:`~edgefleet.signature.rotation_statement`), the new
public key is recorded and the old one marked retired, then the new private key replaces the
old file. A device that pinned an old key follows the chain of endorsements a signature carries
(:func:`key_chain`) up to the new key. New versions are signed with the new key; existing
signatures are not touched. (An interrupted rotation leaves ``<path>.next``;
:func:`open_signer` finishes it when the database already knows that key and discards it
otherwise.)

What is signed is the version statement of :func:`edgefleet.signature.version_statement`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from edgefleet.errors import SignatureError
from edgefleet.plan import PlanManifest
from edgefleet.signature import (
    encode_b64,
    key_id_of,
    rotation_statement,
    verify,
    version_statement,
)
from edgefleet.wire import ArtifactRef, SigningKeyInfo, VersionSignature
from registry import audit
from registry.errors import ConflictError, NotFoundError
from registry.models import Model, ModelVersion, SigningKey, VersionStatus, utcnow

__all__ = [
    "Signer",
    "check_apart",
    "commit_rotation",
    "current_key_info",
    "ensure_registered",
    "key_chain",
    "key_info",
    "open_signer",
    "public_keys",
    "rotate",
    "sign_unsigned",
    "sign_version",
    "signature_of",
    "statement_of",
    "verify_version_signature",
]

log = logging.getLogger(__name__)
KEY_MODE = 0o600
DIR_MODE = 0o700


@dataclass(frozen=True)
class Signer:
    """The registry's private signing key (loaded from, or created at, ``path``)."""

    path: Path
    key_id: str
    public_key: str
    _private: Any

    @classmethod
    def load(cls, path: str | Path, *, create: bool = True) -> Signer:
        """Load the key at ``path``; create it first when missing and ``create`` is true."""
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            if not create:
                raise NotFoundError(f"no signing key at {path}")
            if _write_private(path, _generate(), replace=False):
                log.warning("created a new version-signing key at %s", path)
        return cls._from_pem(path, path.read_bytes())

    @classmethod
    def _from_pem(cls, path: Path, pem: bytes) -> Signer:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        public = encode_b64(_raw_public(key))
        return cls(path=path, key_id=key_id_of(public), public_key=public, _private=key)

    def sign(self, message: bytes) -> str:
        """The base64 Ed25519 signature of ``message``."""
        return encode_b64(self._private.sign(message))


def check_apart(key_path: str | Path, artifact_dir: str | Path) -> None:
    """Refuse a signing key inside the artifact store (whoever writes the store could sign)."""
    key = Path(key_path).expanduser().resolve()
    store = Path(artifact_dir).expanduser().resolve()
    if key == store or store in key.parents:
        raise ConflictError(
            f"the signing key {key} must not lie inside the artifact store {store}"
        )


# --- the key table ---------------------------------------------------------------------------
def open_signer(
    session: Session, path: str | Path, *, actor: str = audit.SYSTEM_ACTOR
) -> Signer:
    """Load (or create) the key at ``path``, finish an interrupted rotation, record the key
    (a key new to the database is audited as ``key.create`` by ``actor``)."""
    signer = Signer.load(path)
    pending = signer.path.with_name(signer.path.name + ".next")
    if pending.is_file():
        nxt = Signer._from_pem(signer.path, pending.read_bytes())
        if session.get(SigningKey, nxt.key_id) is not None:  # committed: finish the rotation
            commit_rotation(nxt)
            signer = nxt
        else:  # the rotation's commit never happened
            pending.unlink()
    ensure_registered(session, signer, actor=actor)
    return signer


def ensure_registered(
    session: Session, signer: Signer, *, actor: str = audit.SYSTEM_ACTOR
) -> SigningKey:
    """Record ``signer``'s public key (once) and retire any other key still marked current.

    Safe when several processes (server workers starting together) call it at once: when there
    is anything to change, it first takes the audit chain's lock (:func:`registry.audit.
    lock_chain`, which every key registration needs anyway for its ``key.create`` record) and
    only then reads the key table again, so the first caller inserts the row and the others,
    once it committed, find it and change nothing. Call it in a writing session
    (:func:`registry.db.write_session`).

    A key that appears without an endorsement while another key is current was swapped in by
    hand (not rotated): devices that pinned the old key will refuse its signatures, so this is
    logged as an error.
    """
    row = session.get(SigningKey, signer.key_id)
    if row is not None and row.retired_at is None and not _others_current(session, signer):
        return row  # the usual start-up: nothing to change, nothing locked
    audit.lock_chain(session)
    row = session.get(SigningKey, signer.key_id, populate_existing=True)
    current = _current(session)
    if row is None:
        if current:
            log.error("signing key %s is new and not endorsed by %s: devices that pinned the "
                      "old key will refuse its signatures (use `edgefleet server keys rotate`)",
                      signer.key_id, ", ".join(k.key_id for k in current))
        row = SigningKey(key_id=signer.key_id, public_key=signer.public_key)
        session.add(row)
        audit.record(
            session, actor=actor, action="key.create", target=f"key/{signer.key_id}",
            before={"current": sorted(k.key_id for k in current)} if current else None,
            after={"key_id": signer.key_id, "public_key": signer.public_key},
        )
    elif row.retired_at is not None:
        row.retired_at = None
        session.add(row)
    for other in current:
        if other.key_id != signer.key_id:
            other.retired_at = utcnow()
            session.add(other)
    session.flush()
    return row


def _current(session: Session) -> list[SigningKey]:
    """The keys not retired, re-read from the database (not from the session's identity map)."""
    stmt = (select(SigningKey).where(col(SigningKey.retired_at).is_(None))
            .execution_options(populate_existing=True))
    return list(session.exec(stmt).all())


def _others_current(session: Session, signer: Signer) -> bool:
    return any(k.key_id != signer.key_id for k in _current(session))


def rotate(session: Session, signer: Signer, *, actor: str = audit.SYSTEM_ACTOR) -> Signer:
    """Replace ``signer``'s key with a new one it endorses; return the new :class:`Signer`.

    The database row is flushed before the key file is replaced; the caller commits. When the
    commit fails the old file is still in place and ``<path>.next`` is ignored on next load.
    The rotation is audited (``key.rotate``) as ``actor``; it holds the audit chain's lock from
    its first statement, so it is serialised with key registrations in other processes.
    """
    audit.lock_chain(session)
    ensure_registered(session, signer, actor=actor)
    new_private = _generate()
    new_public = encode_b64(_raw_public(new_private))
    new_id = key_id_of(new_public)
    session.add(SigningKey(key_id=new_id, public_key=new_public, endorsed_by=signer.key_id,
                           endorsement=signer.sign(rotation_statement(new_id, new_public))))
    old = session.get(SigningKey, signer.key_id)
    assert old is not None
    old.retired_at = utcnow()
    session.add(old)
    session.flush()
    audit.record(session, actor=actor, action="key.rotate", target=f"key/{signer.key_id}",
                 before={"key_id": signer.key_id},
                 after={"key_id": new_id, "public_key": new_public, "endorsed_by": signer.key_id})
    pending = signer.path.with_name(signer.path.name + ".next")
    _write_private(pending, new_private)
    return Signer._from_pem(signer.path, pending.read_bytes())


def commit_rotation(signer: Signer) -> None:
    """After the rotation's commit: move ``<path>.next`` over the key file."""
    pending = signer.path.with_name(signer.path.name + ".next")
    os.replace(pending, signer.path)
    _fsync_dir(signer.path.parent)


def key_info(row: SigningKey) -> SigningKeyInfo:
    return SigningKeyInfo(key_id=row.key_id, public_key=row.public_key,
                          endorsed_by=row.endorsed_by, endorsement=row.endorsement)


def current_key_info(session: Session, signer: Signer | None) -> SigningKeyInfo | None:
    """The wire form of ``signer``'s key (what a device pins at enrolment)."""
    if signer is None:
        return None
    row = session.get(SigningKey, signer.key_id)
    return key_info(row) if row is not None else None


def key_chain(session: Session, key_id: str) -> list[SigningKeyInfo]:
    """The keys from the first to ``key_id``, following endorsements backwards (oldest first)."""
    chain: list[SigningKeyInfo] = []
    seen: set[str] = set()
    current: str | None = key_id
    while current is not None and current not in seen:
        seen.add(current)
        row = session.get(SigningKey, current)
        if row is None:
            break
        chain.append(key_info(row))
        current = row.endorsed_by
    chain.reverse()
    return chain


def public_keys(session: Session) -> dict[str, str]:
    """Every recorded public key by key id."""
    return {k.key_id: k.public_key for k in session.exec(select(SigningKey)).all()}


# --- signing versions --------------------------------------------------------------------------
def statement_of(version: ModelVersion, model_name: str, manifest: PlanManifest | None = None
                 ) -> bytes:
    """The version statement of a version row (see :mod:`edgefleet.signature`)."""
    m = manifest or PlanManifest.model_validate(version.manifest)
    return version_statement(
        model=model_name, version=version.number,
        plan=ArtifactRef(url="", sha256=version.plan_sha256, size=version.plan_size),
        weights=ArtifactRef(url="", sha256=version.weights_sha256, size=version.weights_size),
        manifest=ArtifactRef(url="", sha256=version.manifest_sha256, size=version.manifest_size),
        plan_name=m.name, plan_format=m.format, class_labels=m.output.class_labels,
    )


def sign_version(version: ModelVersion, model_name: str, signer: Signer,
                 manifest: PlanManifest | None = None) -> None:
    """Sign ``version`` in place (the caller adds and commits it)."""
    version.signature = signer.sign(statement_of(version, model_name, manifest))
    version.signing_key_id = signer.key_id


def signature_of(session: Session, version: ModelVersion) -> VersionSignature | None:
    """The wire form of a version's signature, with the key chain up to its signer."""
    if not version.signature or not version.signing_key_id:
        return None
    return VersionSignature(key_id=version.signing_key_id, signature=version.signature,
                            key_chain=key_chain(session, version.signing_key_id))


def verify_version_signature(version: ModelVersion, model_name: str, keys: dict[str, str]
                             ) -> str | None:
    """Why ``version``'s signature does not verify against ``keys`` (``None`` when it does)."""
    if not version.signature or not version.signing_key_id:
        return "unsigned"
    public = keys.get(version.signing_key_id)
    if public is None:
        return f"signed by unknown key {version.signing_key_id}"
    try:
        verify(public, statement_of(version, model_name), version.signature)
    except (SignatureError, ValueError) as exc:
        return f"signature: {exc}"
    return None


def sign_unsigned(session: Session, signer: Signer) -> int:
    """Sign every version that has no signature yet (published before signing existed)."""
    rows = session.exec(
        select(ModelVersion, Model.name)
        .join(Model, col(Model.id) == col(ModelVersion.model_id))
        .where(col(ModelVersion.signature).is_(None),
               col(ModelVersion.status) != VersionStatus.DAMAGED)
    ).all()
    for version, name in rows:
        sign_version(version, name, signer)
        session.add(version)
    session.flush()
    return len(rows)


# --- files ---------------------------------------------------------------------------------
def _generate() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def _raw_public(private: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw: bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return raw


def _write_private(path: Path, private: Any, *, replace: bool = True) -> bool:
    """Write the PEM with mode 0600 from the first byte (a unique temporary file, then a
    rename; without ``replace`` a hard link that fails when another process created the key
    first). Returns whether this call wrote the key."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    try:
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)
    return True


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
