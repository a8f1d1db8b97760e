"""Integrity at start-up and in the background: the signing key and the periodic scrub.

:func:`prepare_integrity` runs in the application's start-up, after migrations: it refuses a
signing key inside the artifact store, loads (or creates) the key and records its public key
(:func:`registry.signing.open_signer`, safe when several workers start at once), then, in a
second transaction, signs versions published before signing existed. When the database cannot
do that yet (down, not migrated), the server starts anyway (readiness says what is wrong) and
:class:`Scrubber` retries every ``RETRY_S`` seconds.

No version is ever stored unsigned by the server: a request that needs the key (publishing a
version, enrolling a device, which pins the key) calls :func:`require_signer`, which tries the
preparation once more itself and otherwise refuses with
:class:`~server.errors.SigningUnavailableError` (503) and why.

:class:`Scrubber` re-hashes the whole store every ``scrub_interval_s`` seconds in a daemon
thread (:func:`registry.integrity.scrub`): what it finds damaged becomes DAMAGED (audited as
``SCRUB_ACTOR``) and is logged as an error; a failed scrub is logged and retried at the next
interval.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

from registry.db import session_scope
from registry.integrity import ScrubReport, scrub
from registry.signing import Signer, check_apart, open_signer, sign_unsigned
from server.errors import SigningUnavailableError
from server.state import AppState

__all__ = ["SCRUB_ACTOR", "Scrubber", "prepare_integrity", "require_signer", "run_scrub"]

log = logging.getLogger(__name__)
RETRY_S = 5.0
#: The audit actor of the periodic scrub's status changes.
SCRUB_ACTOR = "system:scrubber"
_PREPARING = threading.Lock()  # the scrubber thread and request threads prepare one at a time


def prepare_integrity(state: AppState) -> bool:
    """Load the signing key into ``state`` and sign unsigned versions (see the module notes);
    ``False`` (logged) when the database cannot do it yet. A key inside the store raises."""
    return _prepare(state) is None


def require_signer(state: AppState) -> Signer:
    """``state``'s signer, preparing it now if start-up could not; raises
    :class:`~server.errors.SigningUnavailableError` (503) while that still fails."""
    if state.signer is not None:
        return state.signer
    why = _prepare(state)
    if state.signer is None:
        raise SigningUnavailableError(
            "version signing is not ready on this server (the signing key could not be loaded "
            f"and recorded in the database: {why}); nothing was stored, retry in a few seconds"
        )
    return state.signer


def _prepare(state: AppState) -> str | None:
    """Do :func:`prepare_integrity`'s work unless already done; ``None``, or the name of the
    error that stopped it (the log has the whole message)."""
    settings = state.settings
    check_apart(settings.signing_key_path, settings.artifact_dir)
    with _PREPARING:
        if state.signer is not None:
            return None
        try:
            with session_scope(state.engine, write=True) as session:
                signer = open_signer(session, settings.signing_key_path)
            with session_scope(state.engine, write=True) as session:
                signed = sign_unsigned(session, signer)
        except (SQLAlchemyError, OSError) as exc:
            log.error("version signing not ready (retrying): %s",
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return type(exc).__name__
        state.signer = signer
    if signed:
        log.warning("signed %d versions published before version signing existed", signed)
    log.info("versions are signed with key %s", signer.key_id)
    return None


def run_scrub(state: AppState) -> ScrubReport:
    """One scrub of the whole store, in its own write transaction."""
    with session_scope(state.engine, write=True) as session:
        report = scrub(session, state.store, actor=SCRUB_ACTOR)
    log.log(logging.INFO if report.ok else logging.ERROR,
            "scrub: %d versions checked, %d damaged, %d restored, %d corrupt unreferenced blobs",
            report.checked, len(report.damaged), len(report.restored),
            len(report.corrupt_blobs))
    return report


class Scrubber:
    """Run :func:`run_scrub` every ``interval_s`` seconds (0: never) until :meth:`stop`; until
    :func:`prepare_integrity` has succeeded, retry that every ``RETRY_S`` seconds instead."""

    def __init__(self, state: AppState, interval_s: float) -> None:
        self.state = state
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgefleet-scrub", daemon=True)

    def start(self) -> Scrubber:
        if self.interval_s > 0 or self.state.signer is None:
            self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            pending = self.state.signer is None
            if self._stop.wait(RETRY_S if pending or self.interval_s <= 0 else self.interval_s):
                return
            if pending:
                prepare_integrity(self.state)
            elif self.interval_s <= 0:
                return
            else:
                try:
                    run_scrub(self.state)
                except Exception:  # the next interval retries; the server keeps serving
                    log.exception("background scrub failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
