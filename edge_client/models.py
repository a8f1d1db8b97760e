"""Installed model versions, the ``active`` pointer, safe switching and rollback.

Layout under ``<data_dir>/models``::

    active.json                     {"current": {...}, "history": [{...}, ...]}   (atomic replace)
    <model>/<version>/plan.tflite   a complete, verified plan directory per installed version
    <model>/<version>/manifest.json
    <model>/<version>/weights.safetensors
    .staging-<uuid>/                a version being downloaded (deleted on failure or at start)

Installing (:meth:`ModelManager.install`) never touches the active model until the very end:

1. download the manifest into a staging directory (streamed, size and sha256 checked against the
   assignment's digest; see :mod:`edge_client.download`), rebuild the version statement from the
   assignment and the manifest and check the registry's signature against the pinned key
   (:mod:`edgefleet.signature`) — an unsigned version, a bad signature or an unknown key is
   refused before anything else is fetched; then the plan and the weights, each verified the
   same way. A file already on the device with the promised size and sha256 — in the verified
   pre-download of a blue-green rollout (``prefetched``, :mod:`edge_client.side_versions`), or
   in an installed version — is copied instead of downloaded, hashed while it is copied
   (:func:`~edge_client.download.reuse_local`); a copy that does not hash right (altered on
   disk) is not used and that file is downloaded;
2. check the manifest belongs to the plan, load the staged directory with
   :class:`~edgefleet.runtime.PlanRuntime` and smoke-test it (:func:`smoke_test`);
3. rename the staging directory to ``<model>/<version>`` (atomic), rewrite ``active.json``
   (temporary file, fsync, ``os.replace``) and only then swap the in-memory runtime.

A crash or an error at any step leaves ``active.json`` naming the old, complete version. Every
refusal (integrity, signature, manifest, smoke test) emits exactly one ``rejected`` event with
its reason. Loading an installed version re-checks its files against the digests recorded in
``active.json``, so a file altered on the device's disk is not served either. The
previous versions stay on disk (``keep_versions``) so :meth:`ModelManager.rollback` can return to
one; :meth:`ModelManager.load_active` rolls back by itself when the current version no longer
loads or answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_client.client import ServerClient
from edge_client.download import Provenance, fetch_artifact
from edge_client.errors import IntegrityError, ModelRejectedError
from edge_client.smoke import smoke_test
from edge_client.storage import atomic_write, fsync_dir
from edgefleet.errors import EdgeFleetError, SignatureError
from edgefleet.plan import PlanManifest, sha256_file
from edgefleet.runtime import MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE, PlanRuntime
from edgefleet.signature import KeyLink, verify_version, version_statement
from edgefleet.wire import ArtifactRef, Assignment

POINTER_FILE = "active.json"
EventSink = Callable[[str, dict[str, Any]], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstalledVersion:
    """One installed model version (an entry of ``active.json``)."""

    model: str
    version: int
    plan_sha256: str
    weights_sha256: str
    installed_at: float
    manifest_sha256: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstalledVersion:
        manifest = d.get("manifest_sha256")
        return cls(str(d["model"]), int(d["version"]), str(d["plan_sha256"]),
                   str(d["weights_sha256"]), float(d["installed_at"]),
                   str(manifest) if manifest else None)

    def check_files(self, path: Path) -> None:
        """Refuse a version directory whose files no longer hash to the recorded digests."""
        wanted = [(PLAN_FILE, self.plan_sha256), (WEIGHTS_FILE, self.weights_sha256)]
        if self.manifest_sha256:
            wanted.append((MANIFEST_FILE, self.manifest_sha256))
        for name, sha in wanted:
            try:
                actual = sha256_file(path / name)
            except OSError as exc:
                raise ModelRejectedError(f"{self.model} v{self.version}: {name}: {exc}") from exc
            if actual != sha:
                raise ModelRejectedError(
                    f"{self.model} v{self.version}: {name} on disk hashes to {actual[:12]}…, "
                    f"installed as {sha[:12]}…"
                )


@dataclass(frozen=True)
class ActiveModel:
    """The version answering local inferences and its loaded runtime."""

    info: InstalledVersion
    runtime: PlanRuntime
    path: Path


class ModelManager:
    """Installs, activates and rolls back model versions under ``models_dir``.

    Parameters
    ----------
    models_dir : Path
        ``<data_dir>/models``.
    interpreter : str
        Passed to :class:`PlanRuntime` (default ``"auto"``).
    keep_versions : int
        Versions kept on disk including the active one (default 2).
    min_free_bytes : int
        Free space each download must leave (default 0).
    on_event : callable or None
        Called as ``on_event(kind, details)`` for ``installed``, ``rejected`` and ``rolled_back``.
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        interpreter: str = "auto",
        keep_versions: int = 2,
        min_free_bytes: int = 0,
        on_event: EventSink | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.interpreter = interpreter
        self.keep_versions = keep_versions
        self.min_free_bytes = min_free_bytes
        self._on_event = on_event or (lambda kind, details: None)
        self._lock = threading.RLock()
        self.active: ActiveModel | None = None

    # --- the pointer ---------------------------------------------------------------------------
    def version_dir(self, model: str, version: int) -> Path:
        return self.models_dir / model / str(version)

    def read_pointer(self) -> tuple[InstalledVersion | None, list[InstalledVersion]]:
        """``(current, history newest first)`` from ``active.json`` (``(None, [])`` if none)."""
        path = self.models_dir / POINTER_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None, []
        current = InstalledVersion.from_dict(data["current"]) if data.get("current") else None
        return current, [InstalledVersion.from_dict(h) for h in data.get("history", [])]

    def _write_pointer(
        self, current: InstalledVersion | None, history: list[InstalledVersion]
    ) -> None:
        body = {"current": asdict(current) if current else None,
                "history": [asdict(h) for h in history[: self.keep_versions - 1]]}
        atomic_write(self.models_dir / POINTER_FILE, json.dumps(body, indent=2).encode())

    # --- loading -------------------------------------------------------------------------------
    def _load(self, info: InstalledVersion) -> ActiveModel:
        path = self.version_dir(info.model, info.version)
        info.check_files(path)
        try:
            runtime = PlanRuntime.from_dir(path, interpreter=self.interpreter)
        except (EdgeFleetError, OSError) as exc:
            raise ModelRejectedError(
                f"{info.model} v{info.version} does not load: {exc}"
            ) from exc
        smoke_test(runtime)
        return ActiveModel(info, runtime, path)

    def load_active(self) -> ActiveModel | None:
        """Load the current version at start; roll back (and report) while it fails."""
        with self._lock:
            self._clean_staging()
            current, _ = self.read_pointer()
            if current is None:
                self.active = None
                return None
            try:
                self.active = self._load(current)
            except ModelRejectedError as exc:
                return self.rollback(str(exc))
            return self.active

    def rollback(self, reason: str) -> ActiveModel | None:
        """Make the newest loadable previous version current; ``None`` if none is left."""
        with self._lock:
            current, history = self.read_pointer()
            failed = current
            while history:
                candidate, history = history[0], history[1:]
                try:
                    loaded = self._load(candidate)
                except ModelRejectedError as exc:
                    reason = f"{reason}; previous {candidate.model} v{candidate.version}: {exc}"
                    continue
                self._write_pointer(candidate, history)
                self.active = loaded
                self._prune()
                self._on_event("rolled_back", {
                    "from": asdict(failed) if failed else None,
                    "to": asdict(candidate), "reason": reason})
                return loaded
            self._write_pointer(None, [])
            self.active = None
            self._on_event("rolled_back", {
                "from": asdict(failed) if failed else None, "to": None, "reason": reason})
            return None

    # --- installing ----------------------------------------------------------------------------
    def is_current(self, assignment: Assignment) -> bool:
        current = self.active.info if self.active else None
        return current is not None and (
            current.model, current.version, current.plan_sha256, current.weights_sha256
        ) == (assignment.model, assignment.version, assignment.plan.sha256,
              assignment.weights.sha256)

    def install(self, client: ServerClient, assignment: Assignment, *,
                pinned: Sequence[KeyLink] = (), prefetched: Path | None = None) -> ActiveModel:
        """Download, verify, load, smoke-test and activate ``assignment`` (see module doc).

        ``pinned`` are the signing keys the device trusts (from enrolment); with none, every
        downloaded version is refused. ``prefetched`` is a directory that may hold this version
        already (a blue-green pre-download): its files are used when they hash to the
        assignment's digests, with the same signature check and smoke test as a download. The
        ``installed`` event's ``sources`` say where each file came from.

        Raises
        ------
        IntegrityError
            A download did not match its digest or size; nothing changed (a ``rejected`` event).
        ArtifactError
            A download was interrupted or the disk is full; nothing changed.
        ModelRejectedError
            Unsigned, a bad signature, a manifest that does not belong, or a version that does
            not load or answer; nothing changed (reported as a ``rejected`` event).
        ServerError
            The server could not be reached or refused a request; nothing changed.
        """
        a = assignment
        info = InstalledVersion(a.model, a.version, a.plan.sha256, a.weights.sha256, time.time(),
                                a.manifest.sha256 if a.manifest else None)
        prov = Provenance(prefetch=prefetched is not None)
        loaded = self._install(info, lambda staging: self._stage(
            client, a, staging, pinned, prefetched=prefetched, prov=prov), prov)
        if prov.prefetch:
            log.info("%s v%s: %s", a.model, a.version, prov.details()["note"])
        return loaded

    def install_dir(self, plan_dir: Path, model: str, version: int) -> ActiveModel:
        """Activate a plan directory already on the device (provisioning without a network:
        a factory image, ``edgefleet agent install``), with the same checks and atomicity."""
        plan_dir = Path(plan_dir)
        try:
            info = InstalledVersion(model, version, sha256_file(plan_dir / PLAN_FILE),
                                    sha256_file(plan_dir / WEIGHTS_FILE), time.time(),
                                    sha256_file(plan_dir / MANIFEST_FILE))
        except OSError as exc:
            raise ModelRejectedError(f"cannot read {plan_dir}: {exc}") from exc

        def copy(staging: Path) -> None:
            for name in (PLAN_FILE, WEIGHTS_FILE, MANIFEST_FILE):
                try:
                    data = (plan_dir / name).read_bytes()
                except OSError as exc:
                    raise ModelRejectedError(f"cannot read {plan_dir / name}: {exc}") from exc
                atomic_write(staging / name, data)

        return self._install(info, copy)

    def _install(self, info: InstalledVersion, stage: Callable[[Path], None],
                 prov: Provenance | None = None) -> ActiveModel:
        with self._lock:
            staging = self.models_dir / f".staging-{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                try:
                    stage(staging)
                    loaded = self._load_staged(info, staging)
                except (ModelRejectedError, IntegrityError) as exc:
                    self._on_event("rejected", {"model": info.model, "version": info.version,
                                                "reason": str(exc)})
                    raise
                return self._commit(staging, loaded, prov.details() if prov else {})
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _stage(self, client: ServerClient, a: Assignment, staging: Path,
               pinned: Sequence[KeyLink], *, prefetched: Path | None = None,
               prov: Provenance | None = None) -> None:
        """Fetch ``a``'s three files into ``staging``, verified (signature first), unloaded."""
        prov = prov if prov is not None else Provenance()
        manifest = self._stage_signed_manifest(client, a, staging, pinned, prefetched, prov)
        if manifest.plan_sha256 != a.plan.sha256:
            raise ModelRejectedError(
                f"manifest of {a.model} v{a.version} describes plan {manifest.plan_sha256[:12]}…, "
                f"the assignment promises {a.plan.sha256[:12]}…"
            )
        for ref, name in ((a.plan, PLAN_FILE), (a.weights, WEIGHTS_FILE)):
            self._fetch(client, ref, staging, name, prefetched, prov).rename(staging / name)

    def _fetch(self, client: ServerClient, ref: ArtifactRef, staging: Path, name: str,
               prefetched: Path | None, prov: Provenance) -> Path:
        """``ref`` verified in ``staging``: from the pre-download, an installed version or the
        server (:func:`~edge_client.download.fetch_artifact`)."""
        local = [("prefetch", prefetched)] if prefetched is not None else []
        local += [("installed", self.version_dir(h.model, h.version)) for h in self._installed()]
        return fetch_artifact(client, ref, staging, name, local=local, provenance=prov,
                              min_free_bytes=self.min_free_bytes)

    def _stage_signed_manifest(self, client: ServerClient, a: Assignment, staging: Path,
                               pinned: Sequence[KeyLink], prefetched: Path | None,
                               prov: Provenance) -> PlanManifest:
        """Download the manifest (digest-checked), check the version's signature, keep the
        manifest's exact bytes in ``staging``; :class:`ModelRejectedError` when refused."""
        what = f"{a.model} v{a.version}"
        if a.manifest is None:
            raise ModelRejectedError(f"{what}: the assignment carries no manifest digest")
        if a.signature is None:
            raise ModelRejectedError(f"{what}: the version is not signed — refused")
        if not pinned:
            raise ModelRejectedError(f"{what}: no signing key is pinned (re-enrol the device)")
        tmp = self._fetch(client, a.manifest, staging, MANIFEST_FILE, prefetched, prov)
        try:
            manifest = PlanManifest.from_json(tmp.read_bytes())
        except EdgeFleetError as exc:
            raise ModelRejectedError(f"{what}: unusable manifest: {exc}") from exc
        statement = version_statement(
            model=a.model, version=a.version, plan=a.plan, weights=a.weights,
            manifest=a.manifest, plan_name=manifest.name, plan_format=manifest.format,
            class_labels=manifest.output.class_labels)
        try:
            verify_version(statement, signer_id=a.signature.key_id,
                           signature=a.signature.signature, pinned=pinned,
                           chain=a.signature.key_chain)
        except SignatureError as exc:
            raise ModelRejectedError(f"{what}: signature refused: {exc}") from exc
        tmp.rename(staging / MANIFEST_FILE)
        return manifest

    def _load_staged(self, info: InstalledVersion, staging: Path) -> ActiveModel:
        try:
            runtime = PlanRuntime.from_dir(staging, interpreter=self.interpreter)
        except (EdgeFleetError, OSError) as exc:
            raise ModelRejectedError(
                f"{info.model} v{info.version} does not load: {exc}") from exc
        smoke_test(runtime)
        return ActiveModel(info, runtime, self.version_dir(info.model, info.version))

    def _commit(self, staging: Path, loaded: ActiveModel, details: dict[str, Any]
                ) -> ActiveModel:
        info, target = loaded.info, loaded.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # an older copy of this version (e.g. rolled back from): replace
            trash = self.models_dir / f".staging-old-{uuid.uuid4().hex}"
            target.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        staging.rename(target)
        fsync_dir(target.parent)
        key = (info.model, info.version)
        current, history = self.read_pointer()
        if current is not None and (current.model, current.version) != key:
            history = [current, *history]
        history = [h for h in history if (h.model, h.version) != key]
        self._write_pointer(info, history)
        self.active = loaded
        self._prune()
        self._on_event("installed", {"model": info.model, "version": info.version,
                                     "interpreter": loaded.runtime.interpreter_name, **details})
        return loaded

    # --- housekeeping --------------------------------------------------------------------------
    def _installed(self) -> list[InstalledVersion]:
        current, history = self.read_pointer()
        return ([current] if current else []) + history

    def _prune(self) -> None:
        keep = {self.version_dir(v.model, v.version) for v in self._installed()}
        for model_dir in self.models_dir.iterdir():
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            for version_dir in model_dir.iterdir():
                if version_dir.is_dir() and version_dir not in keep:
                    shutil.rmtree(version_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                model_dir.rmdir()  # only when empty

    def _clean_staging(self) -> None:
        for leftover in self.models_dir.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
