"""A content-addressed artifact store on the filesystem.

Layout under ``root``::

    blobs/sha256/ab/cd/abcd…(64 hex)    immutable, read-only files named by their content's sha256
    tmp/                                uploads being received and verified

Guarantees

* **Paths never come from requests.** A blob's path is derived only from a sha256 that has been
  validated as 64 lowercase hex digits; nothing a client sends can name a file.
* **Nothing is ever overwritten.** A staged file becomes a blob through ``os.link`` (which fails
  rather than replace an existing name); if the blob already exists, the identical content is
  simply discarded.
* **No half-written blobs.** Bytes are written to a temporary file in ``tmp/`` (same filesystem),
  hashed while streaming, ``fsync``-ed, verified against the declared digest and size limit, and
  only then linked into place (followed by an ``fsync`` of the directory).

At rest, a blob is checked again whenever it is read for serving (:meth:`ArtifactStore.problem`,
:meth:`ArtifactStore.read_verified`) and by the scrub (:mod:`registry.integrity`): whoever can
write the store can change bytes, never what they hash to.

A blob that exists but is referenced by no version (an upload whose database commit failed) is
harmless; the opposite, a version whose blob is missing, cannot happen because the blob is
committed first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from registry.errors import (
    ArtifactTooLargeError,
    DamagedArtifactError,
    DigestMismatchError,
    NotFoundError,
)

__all__ = ["ArtifactStore", "StagedBlob", "Staging", "is_sha256"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


def is_sha256(value: str) -> bool:
    """Whether ``value`` is a sha256 hex digest (64 lowercase hex digits)."""
    return bool(_SHA256.match(value))


@dataclass
class StagedBlob:
    """A verified upload waiting in ``tmp/`` to be committed (or discarded)."""

    path: Path
    sha256: str
    size: int
    committed: bool = field(default=False)

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


class ArtifactStore:
    """Content-addressed blobs under ``root`` (see the module notes for the guarantees).

    Parameters
    ----------
    root
        Directory of the store; created (with ``blobs/`` and ``tmp/``) when missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.blobs = self.root / "blobs" / "sha256"
        self.tmp = self.root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._verified: dict[str, tuple[int, int, int, int]] = {}

    # --- reading -------------------------------------------------------------------------------
    def path(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (whether or not it exists)."""
        if not is_sha256(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.blobs / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return is_sha256(sha256) and self.path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        """Open a blob for reading; :class:`NotFoundError` when absent."""
        try:
            return self.path(sha256).open("rb")
        except (FileNotFoundError, ValueError) as exc:
            raise NotFoundError(f"artifact {sha256[:12]}… is not in the store") from exc

    def read_bytes(self, sha256: str) -> bytes:
        with self.open(sha256) as f:
            return f.read()

    def verify(self, sha256: str) -> bool:
        """Re-hash a stored blob: whether it still has the content its name promises."""
        return self.problem(sha256) is None

    def problem(self, sha256: str, size: int | None = None, *, cached: bool = False
                ) -> str | None:
        """What is wrong with the stored blob ``sha256`` (``None`` when it is intact).

        Missing, of another ``size`` than recorded, or hashing to another digest. With
        ``cached``, a blob whose file identity (inode, size, mtime, ctime) has not changed since
        it last hashed right is not re-hashed: any write to a file moves its ctime, which no
        unprivileged process can set back. The scrub never uses the cache.
        """
        path = self.path(sha256)
        try:
            st = path.stat()
        except FileNotFoundError:
            return "missing from the store"
        except OSError as exc:
            return f"unreadable: {exc}"
        if size is not None and st.st_size != size:
            return f"{st.st_size} bytes, recorded {size}"
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if cached and self._verified.get(sha256) == stamp:
            return None
        h = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while block := f.read(CHUNK):
                    h.update(block)
        except OSError as exc:
            return f"unreadable: {exc}"
        if h.hexdigest() != sha256:
            self._verified.pop(sha256, None)
            return f"hashes to {h.hexdigest()[:12]}…"
        self._verified[sha256] = stamp
        return None

    def read_verified(self, sha256: str, size: int | None = None) -> bytes:
        """The blob's bytes, hashed as read; :class:`DamagedArtifactError` when they are not
        the bytes its name promises (or not ``size`` long), :class:`NotFoundError` if absent."""
        data = self.read_bytes(sha256)
        if size is not None and len(data) != size:
            raise DamagedArtifactError(f"artifact {sha256[:12]}… has {len(data)} bytes, "
                                       f"recorded {size}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise DamagedArtifactError(f"artifact {sha256[:12]}… hashes to {digest[:12]}…")
        return data

    def digests(self) -> Iterator[str]:
        """Every blob's sha256 in the store (by file name)."""
        for path in self.blobs.glob("*/*/*"):
            if path.is_file() and is_sha256(path.name):
                yield path.name

    def healthy(self) -> bool:
        """Whether the store's directories exist and a temporary file can be written."""
        try:
            with tempfile.TemporaryFile(dir=self.tmp):
                pass
        except OSError:
            return False
        return self.blobs.is_dir()

    # --- writing -------------------------------------------------------------------------------
    def stage(
        self,
        source: BinaryIO | Iterable[bytes],
        *,
        expected_sha256: str | None = None,
        max_bytes: int | None = None,
    ) -> StagedBlob:
        """Stream ``source`` to a temporary file, hashing as it goes, and verify it.

        Raises :class:`ArtifactTooLargeError` as soon as more than ``max_bytes`` arrive and
        :class:`DigestMismatchError` when the content does not hash to ``expected_sha256``; in
        both cases the temporary file is removed.
        """
        if expected_sha256 is not None and not is_sha256(expected_sha256):
            raise DigestMismatchError("the declared sha256 is not 64 lowercase hex digits")
        chunks: Iterable[bytes] = (
            iter(lambda: source.read(CHUNK), b"") if hasattr(source, "read") else source  # type: ignore[union-attr]
        )
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-", suffix=".part")
        path = Path(name)
        h, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise ArtifactTooLargeError(
                            f"artifact exceeds the limit of {max_bytes} bytes"
                        )
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if expected_sha256 is not None and digest != expected_sha256:
                raise DigestMismatchError(
                    f"sha256 mismatch: received {digest}, declared {expected_sha256}"
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return StagedBlob(path=path, sha256=digest, size=size)

    def commit(self, staged: StagedBlob) -> str:
        """Move a staged blob into place (never replacing an existing blob); return its sha256."""
        if staged.committed:
            return staged.sha256
        final = self.path(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged.path, 0o444)
        try:
            os.link(staged.path, final)
        except FileExistsError:
            pass  # identical content is already stored
        except OSError:  # filesystems without hard links: rename, but only onto nothing
            if not final.exists():
                os.rename(staged.path, final)
        staged.path.unlink(missing_ok=True)
        _fsync_dir(final.parent)
        staged.committed = True
        return staged.sha256

    def discard(self, staged: StagedBlob) -> None:
        if not staged.committed:
            staged.path.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, *, expected_sha256: str | None = None) -> str:
        """Stage and commit ``data`` in one step; return its sha256."""
        return self.commit(self.stage([data], expected_sha256=expected_sha256))

    @contextlib.contextmanager
    def staging(self) -> Iterator[Staging]:
        """A scope whose staged-but-uncommitted blobs are removed when it ends, however it ends."""
        scope = Staging(self)
        try:
            yield scope
        finally:
            scope.discard_all()

    def cleanup_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary files left by interrupted uploads; return how many were removed."""
        cutoff, removed = time.time() - older_than_s, 0
        for entry in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        return removed


class Staging:
    """Blobs staged within one :meth:`ArtifactStore.staging` scope."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.blobs: list[StagedBlob] = []

    def stage(
        self,
        source: BinaryIO | Iterable[bytes],
        *,
        expected_sha256: str | None = None,
        max_bytes: int | None = None,
    ) -> StagedBlob:
        blob = self.store.stage(source, expected_sha256=expected_sha256, max_bytes=max_bytes)
        self.blobs.append(blob)
        return blob

    def commit_all(self) -> None:
        for blob in self.blobs:
            self.store.commit(blob)

    def discard_all(self) -> None:
        for blob in self.blobs:
            self.store.discard(blob)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
