"""Signed versions: the statement the registry signs for each version, and its check.

Every published version gets a **version statement**: canonical JSON (sorted keys, no spaces,
UTF-8) naming the registry's model and version number, the sha256 and size of each of its three
artifacts (plan, weights, manifest), and the plan's name, format and class labels::

    {"artifacts": {"manifest": {"sha256": "…", "size": 1234}, "plan": {…}, "weights": {…}},
     "class_labels": ["0", …], "format": "edgefleet-version-statement/1", "model": "digits",
     "plan_format": "edgefleet-plan/1", "plan_name": "digits-mlp", "version": 3}

The registry signs it with Ed25519 (:mod:`registry.signing` holds the private key, apart from the
artifact store); a device or the aggregation rebuilds the statement from what it was told (the
assignment's digests) and what it downloaded (the manifest, whose own digest is in the statement
too), and checks the signature against a public key it pinned (:func:`verify_version`).

**Key rotation** keeps old signatures verifiable and lets a client that pinned an old key trust a
new one: each new key comes with an *endorsement*, the previous key's signature over
:func:`rotation_statement`. A signature carries the chain of keys from the first to the one that
signed; :func:`trusted_key` walks it from whichever key the client pinned.

``cryptography`` is imported lazily (only where a signature is made or checked).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from edgefleet.errors import SignatureError

__all__ = [
    "ALGORITHM",
    "ROTATION_FORMAT",
    "STATEMENT_FORMAT",
    "canonical_json",
    "decode_b64",
    "encode_b64",
    "key_id_of",
    "rotation_statement",
    "trusted_key",
    "verify",
    "verify_version",
    "version_statement",
]

ALGORITHM = "ed25519"
STATEMENT_FORMAT = "edgefleet-version-statement/1"
ROTATION_FORMAT = "edgefleet-key-rotation/1"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class ArtifactDigest(Protocol):
    """Anything with a ``sha256`` and a ``size`` (``edgefleet.wire.ArtifactRef``, a table row)."""

    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...


class KeyLink(Protocol):
    """One key of a chain (``edgefleet.wire.SigningKeyInfo``)."""

    @property
    def key_id(self) -> str: ...

    @property
    def public_key(self) -> str: ...

    @property
    def endorsed_by(self) -> str | None: ...

    @property
    def endorsement(self) -> str | None: ...


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: one byte string per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_b64(text: str, *, length: int, what: str) -> bytes:
    """Decode standard base64 of exactly ``length`` bytes; :class:`SignatureError` otherwise."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise SignatureError(f"{what} is not base64: {exc}") from exc
    if len(raw) != length:
        raise SignatureError(f"{what} has {len(raw)} bytes, expected {length}")
    return raw


def key_id_of(public_key_b64: str) -> str:
    """A public key's id: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    raw = decode_b64(public_key_b64, length=PUBLIC_KEY_BYTES, what="public key")
    return hashlib.sha256(raw).hexdigest()[:16]


def version_statement(
    *,
    model: str,
    version: int,
    plan: ArtifactDigest,
    weights: ArtifactDigest,
    manifest: ArtifactDigest,
    plan_name: str,
    plan_format: str,
    class_labels: Sequence[str],
) -> bytes:
    """The canonical bytes the registry signs for one version (see the module notes)."""

    def ref(a: ArtifactDigest) -> dict[str, Any]:
        return {"sha256": str(a.sha256), "size": int(a.size)}

    return canonical_json({
        "format": STATEMENT_FORMAT,
        "model": model,
        "version": int(version),
        "artifacts": {"plan": ref(plan), "weights": ref(weights), "manifest": ref(manifest)},
        "plan_name": plan_name,
        "plan_format": plan_format,
        "class_labels": [str(label) for label in class_labels],
    })


def rotation_statement(new_key_id: str, new_public_key: str) -> bytes:
    """What the previous key signs to endorse its successor."""
    return canonical_json({"format": ROTATION_FORMAT, "algorithm": ALGORITHM,
                           "key_id": new_key_id, "public_key": new_public_key})


def verify(public_key_b64: str, message: bytes, signature_b64: str) -> None:
    """Check an Ed25519 signature; :class:`SignatureError` when it does not verify."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw_key = decode_b64(public_key_b64, length=PUBLIC_KEY_BYTES, what="public key")
    raw_sig = decode_b64(signature_b64, length=SIGNATURE_BYTES, what="signature")
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(raw_sig, message)
    except InvalidSignature:
        raise SignatureError("the signature does not verify") from None


def trusted_key(pinned: Iterable[KeyLink], chain: Sequence[KeyLink], signer_id: str) -> str:
    """The public key (base64) of ``signer_id``, if the client may trust it.

    Trusted are the ``pinned`` keys and every key of ``chain`` endorsed, link by link, by a
    trusted key before it. Raises :class:`SignatureError` when ``signer_id`` is not reached.
    """
    trusted: dict[str, str] = {}
    for key in pinned:
        if key_id_of(key.public_key) != key.key_id:
            raise SignatureError(f"pinned key {key.key_id} does not match its public key")
        trusted[key.key_id] = key.public_key
    for link in chain:
        if link.key_id in trusted:
            continue
        if key_id_of(link.public_key) != link.key_id:
            raise SignatureError(f"key {link.key_id} in the chain does not match its public key")
        endorser = trusted.get(link.endorsed_by or "")
        if endorser is None or not link.endorsement:
            continue  # not (yet) reachable from a trusted key
        verify(endorser, rotation_statement(link.key_id, link.public_key), link.endorsement)
        trusted[link.key_id] = link.public_key
    if signer_id not in trusted:
        pinned_ids = ", ".join(sorted(trusted)) or "none"
        raise SignatureError(
            f"signed by key {signer_id}, which no pinned key ({pinned_ids}) endorses"
        )
    return trusted[signer_id]


def verify_version(
    statement: bytes,
    *,
    signer_id: str,
    signature: str,
    pinned: Iterable[KeyLink],
    chain: Sequence[KeyLink] = (),
) -> None:
    """Check a version statement's signature against the pinned keys (and the chain)."""
    verify(trusted_key(pinned, chain, signer_id), statement, signature)
