"""The model a run starts from is checked against the registry's signature (a real server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aggregation.errors import RegistryProtocolError
from aggregation.provenance import signed_version
from aggregation.registry_client import RegistryClient
from edgefleet.signature import encode_b64
from tests.aggregation.conftest import Server, register_plan

MODEL = "digits-signed"


class Tampering(RegistryClient):
    """A client whose answers are altered on the way (a man in the middle)."""

    def __init__(self, *args, change: dict[str, object], **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.change = change

    def artifact(self, model: str, version: int, kind: str) -> bytes:
        data = super().artifact(model, version, kind)
        fn = self.change.get(kind)
        return fn(data) if callable(fn) else data


@pytest.fixture(scope="module")
def version(registry_server: Server, digits_plan_dir: Path) -> int:
    return register_plan(registry_server, MODEL, digits_plan_dir)


def test_a_signed_version_verifies(registry_server: Server, version: int) -> None:
    with RegistryClient(registry_server.url, registry_server.admin_key) as client:
        start = signed_version(client, MODEL, version)
        key = start.info.signature.key_chain[0].public_key  # type: ignore[union-attr]
        again = signed_version(client, MODEL, version, signing_public_key=key)
    assert start.manifest.name and set(again.weights) == set(start.manifest.weight_names())


def _relabel(data: bytes) -> bytes:
    manifest = json.loads(data)
    manifest["output"]["class_labels"][1] = "7"
    return json.dumps(manifest).encode()


@pytest.mark.parametrize(("kind", "change", "message"), [
    ("weights", lambda d: d[:-4] + b"\0\0\0\0", "is not the one the registry recorded"),
    ("manifest", _relabel, "is not the one the registry recorded"),
    ("plan", lambda d: d[: len(d) // 2], "is not the one the registry recorded"),
])
def test_an_altered_artifact_does_not_start_a_run(
    registry_server: Server, version: int, kind: str, change, message: str
) -> None:
    with Tampering(registry_server.url, registry_server.admin_key, change={kind: change}) as c, \
            pytest.raises(RegistryProtocolError, match=message):
        signed_version(c, MODEL, version)


def test_a_signature_by_another_key_does_not_start_a_run(
    registry_server: Server, version: int
) -> None:
    stranger = encode_b64(bytes(range(32)))
    with RegistryClient(registry_server.url, registry_server.admin_key) as client, \
            pytest.raises(RegistryProtocolError, match="signature refused"):
        signed_version(client, MODEL, version, signing_public_key=stranger)
