"""Streamed, verified artifact downloads that never leave a half-written file behind.

:func:`download_artifact` streams an artifact into a temporary file in the destination directory
(``.<name>.<uuid>.part``, same filesystem as its final place so the later rename is atomic),
checks the promised size *while* receiving (a body longer than promised is cut off at once) and
the size and sha256 at the end, ``fsync``\\ s it and only then returns its path. On any failure —
the connection closing mid-body, a timeout, a wrong hash, a full disk — the temporary file is
deleted and an :class:`~edge_client.errors.ArtifactError` explains why.

Disk space is checked twice: before the first byte (``shutil.disk_usage`` must leave
``min_free_bytes`` after the artifact) and on every write (``ENOSPC``/``EDQUOT``/``EFBIG`` from the
kernel become :class:`~edge_client.errors.DiskFullError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path

import httpx

from edge_client.client import ServerClient
from edge_client.errors import (
    DiskFullError,
    DownloadInterruptedError,
    IntegrityError,
    ServerError,
)
from edge_client.storage import is_disk_full
from edgefleet.plan import sha256_file
from edgefleet.wire import ArtifactRef

CHUNK_SIZE = 64 * 1024


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
    """Copy an installed file that already has ``ref``'s content (a new version often keeps
    its plan and only brings new weights); ``None`` when it does not match."""
    if not source.is_file() or source.stat().st_size != ref.size:
        return None
    if sha256_file(source) != ref.sha256:
        return None
    tmp = directory / f".{name}.{uuid.uuid4().hex}.part"
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise DiskFullError(f"{name}: disk full copying {source}: {exc}") from exc
        raise
    return tmp
