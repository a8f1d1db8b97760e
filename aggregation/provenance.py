"""The model a run starts from is the registry's, signed: the check devices make, for Flower.

:func:`signed_version` fetches a version's record (with its signature and key chain) and its
three artifacts, checks each artifact's sha256 and size against the record, rebuilds the
version statement (:mod:`edgefleet.signature`) and verifies the registry's signature before
anything is parsed further. The key trusted is ``signing_public_key`` (base64, the run setting
``signing-public-key``) when given; otherwise the first key of the chain the registry sends
(trust on first use: a tampered store or a forged digest is still caught, a registry that lies
about its own key is not). An unsigned or damaged version, a digest or a signature that does
not verify, is :class:`~aggregation.errors.RegistryProtocolError`: the run does not start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregation.errors import RegistryProtocolError
from aggregation.registry_client import RegistryClient
from edgefleet.errors import EdgeFleetError, SignatureError
from edgefleet.plan import PlanManifest, sha256_bytes, weights_from_bytes
from edgefleet.signature import key_id_of, verify_version, version_statement
from edgefleet.wire import ArtifactInfo, SigningKeyInfo, VersionInfo

__all__ = ["SignedVersion", "signed_version"]


@dataclass(frozen=True)
class SignedVersion:
    """A version whose artifacts matched its signed statement."""

    info: VersionInfo
    manifest: PlanManifest
    plan: bytes
    weights: dict[str, np.ndarray]


def signed_version(client: RegistryClient, model: str, version: int, *,
                   signing_public_key: str = "") -> SignedVersion:
    """Fetch and verify ``version`` of ``model`` (see the module notes)."""
    what = f"{model} v{version}"
    info = client.version(model, version)
    if info.status not in ("READY", "ARCHIVED"):
        raise RegistryProtocolError(f"{what} is {info.status}: {info.status_reason}")
    sig = info.signature
    if sig is None:
        raise RegistryProtocolError(f"{what} is not signed: refused as the run's start")
    data = {kind: client.artifact(model, version, kind) for kind in ("manifest", "plan",
                                                                     "weights")}
    for kind, ref in (("manifest", info.manifest), ("plan", info.plan), ("weights", info.weights)):
        _check_digest(what, kind, data[kind], ref)
    try:
        manifest = PlanManifest.from_json(data["manifest"])
        statement = version_statement(
            model=model, version=version, plan=info.plan, weights=info.weights,
            manifest=info.manifest, plan_name=manifest.name, plan_format=manifest.format,
            class_labels=manifest.output.class_labels)
        pinned = _pinned(signing_public_key, sig.key_chain)
        verify_version(statement, signer_id=sig.key_id, signature=sig.signature,
                       pinned=pinned, chain=sig.key_chain)
        manifest.check_plan_bytes(data["plan"])
        weights = weights_from_bytes(data["weights"], manifest=manifest)
    except SignatureError as exc:
        raise RegistryProtocolError(f"{what}: signature refused: {exc}") from exc
    except EdgeFleetError as exc:
        raise RegistryProtocolError(f"{what}: {exc}") from exc
    return SignedVersion(info, manifest, data["plan"], weights)


def _check_digest(what: str, kind: str, data: bytes, ref: ArtifactInfo) -> None:
    digest = sha256_bytes(data)
    if digest != ref.sha256 or len(data) != ref.size:
        raise RegistryProtocolError(
            f"{what}: the {kind} received ({digest[:12]}…, {len(data)} bytes) is not the one "
            f"the registry recorded ({ref.sha256[:12]}…, {ref.size} bytes)"
        )


def _pinned(public_key: str, chain: list[SigningKeyInfo]) -> list[SigningKeyInfo]:
    if public_key:
        return [SigningKeyInfo(key_id=key_id_of(public_key), public_key=public_key)]
    return chain[:1]
