"""The runner's REST client of the registry: the serving snapshot and artifact downloads.

:meth:`RegistryClient.snapshot` polls ``/api/v1/serving/models`` with ``If-None-Match`` (``None``
back when unchanged). :class:`ArtifactCache` keeps artifacts by sha256 in a directory: a
download streams into a temporary file in the cache directory while hashing, is refused when its
size or sha256 is not the promised one (nothing is kept), and is renamed into place only when
it matches; every read re-hashes the file, so a cache altered on disk is refused too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path

import httpx

from edgefleet.serving import SERVING_PATH, ServingSnapshot
from edgefleet.wire import API_PREFIX, ArtifactRef
from registry.errors import DamagedArtifactError
from server.errors import ModelUnavailableError

__all__ = ["ArtifactCache", "RegistryClient"]

CHUNK = 64 * 1024


class RegistryClient:
    """HTTP to the registry with the runner's key (``Authorization: Bearer``)."""

    def __init__(self, base_url: str, key: str, *, timeout_s: float = 30.0,
                 verify: str | bool = True) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                 timeout=timeout_s, verify=verify)

    def close(self) -> None:
        self.http.close()

    def snapshot(self, etag: str | None) -> tuple[ServingSnapshot, str | None] | None:
        """The snapshot and its ETag, or ``None`` when it is still the one ``etag`` names."""
        headers = {"If-None-Match": etag} if etag else {}
        try:
            response = self.http.get(API_PREFIX + SERVING_PATH, headers=headers)
        except httpx.HTTPError as exc:
            raise ModelUnavailableError(f"the registry cannot be reached: {exc}") from exc
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise ModelUnavailableError(
                f"the registry refused the serving snapshot: {response.status_code} "
                f"{response.text[:200]}"
            )
        return ServingSnapshot.model_validate_json(response.content), response.headers.get("etag")

    def stream(self, url: str) -> contextlib.AbstractContextManager[httpx.Response]:
        return self.http.stream("GET", url)


class ArtifactCache:
    """Verified artifacts by sha256 under ``directory`` (see the module notes)."""

    def __init__(self, directory: Path, client: RegistryClient) -> None:
        self.directory = directory
        self.client = client
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".*.part"):
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        return self.directory / sha256

    def get(self, ref: ArtifactRef, what: str) -> bytes:
        """The bytes of ``ref``: from the cache when intact, else downloaded and verified."""
        path = self.path(ref.sha256)
        if path.is_file():
            data = path.read_bytes()
            if len(data) == ref.size and hashlib.sha256(data).hexdigest() == ref.sha256:
                return data
            path.unlink(missing_ok=True)  # altered on disk: fetch it again
        self._download(ref, what)
        return path.read_bytes()

    def discard(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def _download(self, ref: ArtifactRef, what: str) -> None:
        tmp = self.directory / f".{ref.sha256}.{uuid.uuid4().hex}.part"
        digest, received = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out, self.client.stream(ref.url) as response:
                if response.status_code != 200:
                    response.read()
                    raise ModelUnavailableError(
                        f"{what}: the registry answered {response.status_code}: "
                        f"{response.text[:200]}"
                    )
                for block in response.iter_bytes(CHUNK):
                    received += len(block)
                    if received > ref.size:
                        raise DamagedArtifactError(
                            f"{what}: more than the promised {ref.size} bytes — refused")
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if received != ref.size or digest.hexdigest() != ref.sha256:
                raise DamagedArtifactError(
                    f"{what}: received {received} bytes with sha256 {digest.hexdigest()[:12]}…, "
                    f"expected {ref.size} bytes with sha256 {ref.sha256[:12]}… — refused"
                )
            os.replace(tmp, self.path(ref.sha256))
        except httpx.HTTPError as exc:
            raise ModelUnavailableError(f"{what}: download failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
