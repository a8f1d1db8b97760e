"""Real concurrent processes against one database, for the race tests of the signing key and the
audit chain (``tests/registry/test_signing_race.py``).

Each child is a fresh interpreter (``spawn``) with its own engine, like a uvicorn worker; the
children meet at a barrier before every round so they hit the database at the same moment, and
report each round's outcome (``("ok", value)`` or ``("error", message)``) on a queue.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

from registry import audit
from registry.db import make_engine, session_scope
from registry.signing import open_signer

__all__ = ["append_records", "open_keys", "run_processes"]

BARRIER_TIMEOUT_S = 120.0


def _outcome(fn: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", fn()
    except Exception as exc:  # reported to the parent, which asserts on it
        return "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def open_keys(url: str, key_paths: Sequence[str], barrier: Any, results: Any) -> None:
    """For each path in turn, wait for the others, then open (create, register) that key as a
    server worker does at start-up; report the key id."""
    engine = make_engine(url)
    try:
        for path in key_paths:
            barrier.wait(BARRIER_TIMEOUT_S)

            def once(path: str = path) -> str:
                with session_scope(engine, write=True) as session:
                    return open_signer(session, path, actor="system:server").key_id

            results.put(_outcome(once))
    finally:
        engine.dispose()


def append_records(url: str, actor: str, rounds: int, barrier: Any, results: Any) -> None:
    """``rounds`` times: wait for the others, then append one audit record; report its seq."""
    engine = make_engine(url)
    try:
        for i in range(rounds):
            barrier.wait(BARRIER_TIMEOUT_S)

            def once(i: int = i) -> int:
                with session_scope(engine, write=True) as session:
                    return audit.record(session, actor=actor, action="alias.move",
                                        target=f"digits/r{i}", after={"round": i}).seq

            results.put(_outcome(once))
    finally:
        engine.dispose()


def run_processes(target: Callable[..., None], args: Sequence[tuple[Any, ...]], rounds: int,
                  timeout: float = 300.0) -> list[tuple[str, object]]:
    """Start one process per ``args`` entry running ``target(*entry, barrier, results)`` and
    collect the ``len(args) * rounds`` outcomes they report."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results), daemon=True) for a in args]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=timeout) for _ in range(len(args) * rounds)]
        for p in procs:
            p.join(timeout)
        assert [p.exitcode for p in procs] == [0] * len(procs)
        return outcomes
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
