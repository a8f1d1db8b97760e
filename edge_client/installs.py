"""What the agent remembers about installing assignments: refusals and retry backoff.

An assignment is identified by its fingerprint (:func:`fingerprint`: model, version, digests and
signature). A refusal (integrity, signature, manifest, smoke test, or a model that failed to
answer after passing its smoke test) is kept under the state key ``rejected`` until the
assignment changes; any other failure schedules a retry under ``install_retry`` with exponential
backoff and jitter (``install_backoff_base_s``, ``install_backoff_max_s``). The last failure is
kept under ``last_install_error`` for ``edgefleet agent status``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from edge_client.models import InstalledVersion
from edge_client.settings import AgentSettings
from edge_client.storage import StateStore
from edgefleet.wire import Assignment

Blocked = Literal["rejected", "backoff"]


def fingerprint(a: Assignment) -> list[Any]:
    """What identifies an assignment's content: its digests and its signature (a refusal of
    ``[model, version, plan, weights]`` by :meth:`InstallLedger.reject` matches as a prefix)."""
    return [a.model, a.version, a.plan.sha256, a.weights.sha256,
            a.manifest.sha256 if a.manifest else None,
            a.signature.signature if a.signature else None]


@dataclass(frozen=True)
class InstallAttempt:
    """One look at the ledger before installing an assignment.

    ``blocked`` is why the attempt must not be made (``None``: go ahead); ``failures`` counts
    the earlier failures of this very fingerprint.
    """

    fingerprint: list[Any]
    failures: int
    blocked: Blocked | None


class InstallLedger:
    """The refusal and retry records of one agent, kept in its :class:`StateStore`.

    Parameters
    ----------
    state : StateStore
        Where the records live (read directly; a read error propagates).
    settings : AgentSettings
        The backoff bounds.
    note : callable
        The agent's best-effort write (``note(key, value)``; ``None`` clears the key).
    """

    def __init__(self, state: StateStore, settings: AgentSettings,
                 note: Callable[[str, Any], None]) -> None:
        self.state = state
        self.settings = settings
        self._note = note

    def check(self, a: Assignment) -> InstallAttempt:
        """Whether ``a`` was refused before or its retry is not due yet."""
        fp = fingerprint(a)
        rejected = self.state.get("rejected")
        if rejected and list(rejected) == fp[: len(rejected)]:
            return InstallAttempt(fp, 0, "rejected")
        retry = self.state.get("install_retry") or {}
        same = retry.get("fingerprint") == fp
        failures = int(retry.get("failures", 0)) if same else 0
        if same and time.time() < float(retry.get("due", 0)):
            return InstallAttempt(fp, failures, "backoff")
        return InstallAttempt(fp, failures, None)

    def refused(self, attempt: InstallAttempt, exc: Exception) -> None:
        """The assignment was refused: never fetched again until it changes."""
        self._note("rejected", attempt.fingerprint)
        self._note("last_install_error", {"at": time.time(), "error": str(exc),
                                          "refused": True})

    def failed(self, attempt: InstallAttempt, exc: Exception) -> None:
        """The install failed for another reason: schedule the retry."""
        failures = attempt.failures + 1
        s = self.settings
        delay = min(s.install_backoff_max_s, s.install_backoff_base_s * 2 ** (failures - 1))
        due = time.time() + delay * random.uniform(0.5, 1.5)
        self._note("install_retry", {"fingerprint": attempt.fingerprint, "failures": failures,
                                     "due": due})
        self._note("last_install_error", {"at": time.time(), "error": str(exc),
                                          "retry_in_s": round(due - time.time(), 1)})

    def succeeded(self) -> None:
        """The assignment is installed: forget the retry and the last error."""
        self._note("install_retry", None)
        self._note("last_install_error", None)

    def reject(self, info: InstalledVersion) -> None:
        """Never reinstall ``info`` (same model, version and hashes) unless the assignment
        changes."""
        self._note("rejected", [info.model, info.version, info.plan_sha256, info.weights_sha256])
