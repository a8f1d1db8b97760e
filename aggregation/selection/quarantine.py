"""Quarantine: a node whose updates are refused again and again is not selected any more.

:class:`Quarantine` wraps a selection policy. The round loop hands it every round's verdicts
(:meth:`Quarantine.record`); it counts each node's refused updates, and a node refused in
``after`` rounds out of its last ``window`` validated updates is **quarantined**: filtered out
of the candidates before the wrapped policy picks, for every later round, until an operator
lets it back (:meth:`Quarantine.release`, ``edgefleet fl quarantine release``). An accepted
update does not undo refusals inside the window, so a node that alternates cannot stay in.

The state (refusals per node, the quarantined nodes with when and why) is kept in memory and,
with ``path``, in a JSON file rewritten atomically after every change, so it outlives the run
and the operator's command edits the same file. Nodes are Flower node ids: stable for a
SuperNode that keeps its identity (node authentication registers its key).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from aggregation.errors import SettingsError
from aggregation.selection.base import Candidate, SelectionPolicy

__all__ = ["Quarantine", "QuarantineEntry", "RefusalAware", "load_entries", "release"]

DEFAULT_AFTER = 3
DEFAULT_WINDOW = 5


@runtime_checkable
class RefusalAware(Protocol):
    """A policy that wants each round's verdicts (``aggregation.validation_types.Verdict``)."""

    def record(self, server_round: int, verdicts: Sequence[Any]) -> None: ...


@dataclass
class QuarantineEntry:
    """One quarantined node."""

    node_id: int
    since_round: int
    at: float
    reasons: list[str] = field(default_factory=list)


class Quarantine:
    """Keep repeatedly refused nodes out of selection (see the module notes).

    Parameters
    ----------
    policy : SelectionPolicy
        The policy picking among the nodes that are not quarantined.
    after : int (default: 3)
        Refused updates (within ``window``) that quarantine a node.
    window : int (default: 5)
        How many of a node's latest validated updates count.
    path : str or Path or None (default: None)
        JSON file keeping the state across runs (``None``: memory only).
    """

    def __init__(self, policy: SelectionPolicy, *, after: int = DEFAULT_AFTER,
                 window: int = DEFAULT_WINDOW, path: str | Path | None = None) -> None:
        if not 1 <= after <= window:
            raise SettingsError(f"need 1 <= after <= window, got {after} and {window}")
        self.policy = policy
        self.after = after
        self.window = window
        self.path = Path(path) if path is not None else None
        self.name = f"{getattr(policy, 'name', 'policy')}+quarantine"
        self._lock = threading.Lock()
        self.history: dict[int, list[bool]] = {}
        self.quarantined: dict[int, QuarantineEntry] = {}
        self.refusals: dict[int, int] = {}
        self._load()

    # --- selection -------------------------------------------------------------------------
    def select(self, candidates: Sequence[Candidate], k: int, server_round: int,
               rng: np.random.Generator) -> list[int]:
        with self._lock:
            self._load()
            allowed = [c for c in candidates if c.node_id not in self.quarantined]
        return self.policy.select(allowed, k, server_round, rng)

    # --- refusals --------------------------------------------------------------------------
    def record(self, server_round: int, verdicts: Sequence[Any]) -> None:
        """Count this round's refusals; quarantine the nodes that reach ``after``."""
        with self._lock:
            self._load()
            changed = False
            for v in verdicts:
                node = int(v.node_id)
                refused = not v.accepted
                window = [*self.history.get(node, []), refused][-self.window:]
                self.history[node] = window
                if refused:
                    self.refusals[node] = self.refusals.get(node, 0) + 1
                    changed = True
                if refused and sum(window) >= self.after and node not in self.quarantined:
                    self.quarantined[node] = QuarantineEntry(
                        node, server_round, time.time(),
                        sorted({str(r) for r in getattr(v, "reasons", [])}))
            if changed:
                self._save()

    def release(self, node_id: int) -> bool:
        """Let ``node_id`` back into selection (its refusal window starts afresh)."""
        with self._lock:
            self._load()
            found = self.quarantined.pop(int(node_id), None) is not None
            self.history.pop(int(node_id), None)
            self._save()
            return found

    # --- persistence -----------------------------------------------------------------------
    def _load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        state = _read(self.path)
        self.quarantined = {int(e["node_id"]): QuarantineEntry(**e)
                            for e in state.get("quarantined", [])}
        self.history = {int(k): [bool(x) for x in v] for k, v in state.get("history", {}).items()}
        self.refusals = {int(k): int(v) for k, v in state.get("refusals", {}).items()}

    def _save(self) -> None:
        if self.path is None:
            return
        _write(self.path, {
            "quarantined": [asdict(e) for e in self.quarantined.values()],
            "history": {str(k): v for k, v in self.history.items()},
            "refusals": {str(k): v for k, v in self.refusals.items()},
        })


def load_entries(path: str | Path) -> list[QuarantineEntry]:
    """The quarantined nodes recorded in ``path`` (what ``edgefleet fl quarantine`` lists)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [QuarantineEntry(**e) for e in _read(p).get("quarantined", [])]


def release(path: str | Path, node_id: int) -> bool:
    """Let ``node_id`` back, editing the file at ``path``; whether it was quarantined."""
    q = Quarantine(_NoPolicy(), path=path)
    return q.release(node_id)


class _NoPolicy:
    name = "none"

    def select(self, candidates: Sequence[Candidate], k: int, server_round: int,
               rng: np.random.Generator) -> list[int]:
        return []


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"unreadable quarantine file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"quarantine file {path} does not hold an object")
    return data


def _write(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
