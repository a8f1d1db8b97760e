"""Streamed, verified artifact downloads that never leave a half-written file behind.

:func:`download_artifact` streams an artifact into a temporary file in the destination directory
(``.<name>.<uuid>.part``, same filesystem as its final place so the later rename is atomic),
checks the promised size *while* receiving (a body longer than promised is cut off at once) and
the size and sha256 at the end, ``fsync``\\ s it and only then returns its path. On any failure —
the connection closing mid-body, a timeout, a wrong hash, a full disk — the temporary file is
deleted and an :class:`~edge_client.errors.ArtifactError` explains why. :func:`reuse_local`
gives the same result from a file already on the device (hashed while copied) or ``None``;
:func:`fetch_artifact` tries such local copies (a blue-green pre-download, installed versions)
before downloading and records in a :class:`Provenance` where each file came from.

Disk space is checked twice: before the first byte (``shutil.disk_usage`` must leave
``min_free_bytes`` after the artifact) and on every write (``ENOSPC``/``EDQUOT``/``EFBIG`` from the
kernel become :class:`~edge_client.errors.DiskFullError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edge_client.client import ServerClient
from edge_client.errors import (
    DiskFullError,
    DownloadInterruptedError,
    IntegrityError,
    ServerError,
)
from edge_client.storage import is_disk_full
from edgefleet.wire import ArtifactRef

CHUNK_SIZE = 64 * 1024
log = logging.getLogger(__name__)


def check_free_space(directory: Path, needed: int, min_free_bytes: int) -> None:
    """Refuse (before writing anything) when ``needed`` bytes would leave < ``min_free_bytes``."""
    free = shutil.disk_usage(directory).free
    if free - needed < min_free_bytes:
        raise DiskFullError(
            f"not enough disk space in {directory}: {needed} bytes needed, {free} free, "
            f"{min_free_bytes} must stay free"
        )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def download_artifact(
    client: ServerClient,
    ref: ArtifactRef,
    directory: Path,
    name: str,
    *,
    min_free_bytes: int = 0,
    chunk_size: int = CHUNK_SIZE,
) -> Path:
    """Download ``ref`` into ``directory`` as a verified temporary file and return its path.

    The caller renames the returned file into place (or deletes it).

    Raises
    ------
    IntegrityError
        The body is longer or shorter than ``ref.size``, or its sha256 is not ``ref.sha256``.
    DownloadInterruptedError
        The connection closed or timed out before the end of the body.
    DiskFullError
        Not enough space (checked before and during the download).
    ServerError
        The server refused the request or could not be reached.
    """
    directory.mkdir(parents=True, exist_ok=True)
    check_free_space(directory, ref.size, min_free_bytes)
    tmp = directory / f".{name}.{uuid.uuid4().hex}.part"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:  # no inode left is a full disk too
        if is_disk_full(exc):
            raise DiskFullError(f"{name}: cannot create a file in {directory}: {exc}") from exc
        raise
    digest = hashlib.sha256()
    received = 0
    try:
        try:
            with client.stream(ref.url) as response:
                for block in response.iter_bytes(chunk_size):
                    received += len(block)
                    if received > ref.size:
                        raise IntegrityError(
                            f"{name}: server sent more than the promised {ref.size} bytes"
                        )
                    digest.update(block)
                    _write_all(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        if received != ref.size:
            raise IntegrityError(f"{name}: received {received} bytes, expected {ref.size}")
        if digest.hexdigest() != ref.sha256:
            raise IntegrityError(
                f"{name}: sha256 {digest.hexdigest()[:12]}… does not match the promised "
                f"{ref.sha256[:12]}… — refused"
            )
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, (IntegrityError, ServerError)):
            raise
        if isinstance(exc, httpx.TransportError):
            raise DownloadInterruptedError(
                f"{name}: download interrupted after {received} of {ref.size} bytes: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if is_disk_full(exc):
            raise DiskFullError(
                f"{name}: disk full after {received} of {ref.size} bytes in {directory}: {exc}"
            ) from exc
        raise
    return tmp


def reuse_local(source: Path, ref: ArtifactRef, directory: Path, name: str) -> Path | None:
    """Copy a file already on the device that has ``ref``'s content (an installed version, a
    new version that keeps its plan, a pre-downloaded version) into ``directory`` as a verified
    temporary file, as :func:`download_artifact` would; ``None`` when it does not match.

    The copy is hashed as it is written, so what is returned is exactly what ``ref`` promises
    even if ``source`` changes meanwhile. A source of the wrong size or sha256 (another
    version's, or altered on the disk), or one that cannot be read, gives ``None`` and leaves
    nothing behind: the caller downloads instead.

    Raises
    ------
    DiskFullError
        The copy ran out of space.
    """
    try:
        if not source.is_file() or source.stat().st_size != ref.size:
            return None
    except OSError:
        return None
    tmp = directory / f".{name}.{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    copied = 0
    try:
        with open(source, "rb") as src, open(tmp, "xb") as dst:
            while block := src.read(CHUNK_SIZE):
                copied += len(block)
                if copied > ref.size:
                    break
                digest.update(block)
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise DiskFullError(f"{name}: disk full copying {source}: {exc}") from exc
        return None
    if copied != ref.size or digest.hexdigest() != ref.sha256:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None
    return tmp


@dataclass
class Provenance:
    """Where the files of one staged version came from: ``origins`` maps each file name to
    ``"prefetch"``, ``"installed"`` or ``"download"``; ``refused`` names the pre-downloaded files
    that did not hash to their digests (and were fetched elsewhere); ``prefetch``: whether a
    pre-download was offered."""

    prefetch: bool = False
    origins: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        """The ``installed`` event's extra details: ``sources``, and with a pre-download a
        ``note`` saying whether the version was installed from it."""
        if not self.origins:
            return {}
        out: dict[str, Any] = {"sources": dict(self.origins)}
        if not self.prefetch:
            return out
        fetched = sorted(n for n, o in self.origins.items() if o == "download")
        if self.refused:
            out["prefetch_refused"] = list(self.refused)
            out["note"] = (f"pre-download refused ({', '.join(self.refused)} did not match its "
                           f"sha256); downloaded: {', '.join(fetched) or 'nothing'}")
        elif fetched:
            out["note"] = f"installed from the pre-download; downloaded: {', '.join(fetched)}"
        else:
            out["note"] = "installed from the verified pre-download; nothing downloaded again"
        return out


def fetch_artifact(client: ServerClient, ref: ArtifactRef, directory: Path, name: str, *,
                   local: Sequence[tuple[str, Path]] = (), provenance: Provenance | None = None,
                   min_free_bytes: int = 0) -> Path:
    """``ref`` as a verified temporary file in ``directory``: copied from the first
    ``(origin, folder)`` of ``local`` whose ``name`` matches (:func:`reuse_local`), else
    downloaded (:func:`download_artifact`, whose errors it raises). ``provenance`` records the
    origin; a ``"prefetch"`` file that does not match is recorded as refused and logged."""
    prov = provenance if provenance is not None else Provenance()
    for origin, folder in local:
        tmp = reuse_local(folder / name, ref, directory, name)
        if tmp is not None:
            prov.origins[name] = origin
            return tmp
        if origin == "prefetch" and (folder / name).exists():
            prov.refused.append(name)
            log.warning("pre-downloaded %s does not hash to %s…: not used", folder / name,
                        ref.sha256[:12])
    prov.origins[name] = "download"
    return download_artifact(client, ref, directory, name, min_free_bytes=min_free_bytes)
