"""Child processes that are always cleaned up: each in its own process group, all stopped on exit.

:class:`ProcessSupervisor` starts every child with ``start_new_session=True`` (its own session
and process group, so a Ctrl-C in the terminal reaches only the supervising process, which then
stops the children in order). :meth:`ProcessSupervisor.stop_all` — called from ``close()``, an
``atexit`` hook and the SIGTERM/SIGINT/SIGHUP handlers installed by :meth:`handle_signals` —

1. snapshots every live descendant of every child (Flower's SuperLink and SuperNodes spawn
   ``flwr-serverapp``/``flwr-clientapp`` processes, which may start sessions of their own),
   identified by pid *and* start time so a recycled pid is never signalled;
2. sends SIGTERM to each child's process group, newest child first, and waits (bounded);
3. SIGKILLs the groups that are still alive, then any snapshotted descendant still alive.

Only ``/proc`` is read (Linux); only processes this supervisor started, and their descendants,
are ever signalled.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from simulation.errors import Interrupted

log = logging.getLogger(__name__)

ProcKey = tuple[int, int]  # (pid, start time in clock ticks since boot)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of ``pid`` from ``/proc/<pid>/stat``; ``None`` if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # a zombie has exited; only its parent's wait() is missing
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[ProcKey]:
    """Every live descendant of ``pid`` as ``(pid, start time)``, parents before children."""
    children: dict[int, list[ProcKey]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        info = _stat(int(entry.name))
        if info is not None:
            children.setdefault(info[0], []).append((int(entry.name), info[1]))
    out: list[ProcKey] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child[0])
    return out


def alive(key: ProcKey) -> bool:
    """Is the process ``key`` (pid and start time) still running?"""
    info = _stat(key[0])
    return info is not None and info[1] == key[1]


@dataclass
class Child:
    """One supervised process."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, chars: int = 3000) -> str:
        """The end of the child's log (for error messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class ProcessSupervisor:
    """Start children in their own process groups; stop all of them, always.

    Parameters
    ----------
    log_dir : Path
        Each child's stdout and stderr go to ``<log_dir>/<name>.log``.
    env : Mapping[str, str] or None (default: None)
        The base environment of every child (default: this process's).
    stop_timeout_s : float (default: 10.0)
        How long a child group gets between SIGTERM and SIGKILL.
    """

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None, *,
                 stop_timeout_s: float = 10.0) -> None:
        self.log_dir = log_dir
        self.env = dict(os.environ if env is None else env)
        self.stop_timeout_s = stop_timeout_s
        self.children: list[Child] = []
        self.seen: set[ProcKey] = set()
        self._previous: dict[int, Any] = {}
        log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop_all)

    # --- starting ----------------------------------------------------------------------------
    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, fresh_log: bool = False) -> Child:
        """Start ``argv`` in a new session; its output goes to ``<log_dir>/<name>.log``
        (appended to, or replaced when ``fresh_log``)."""
        path = self.log_dir / f"{name}.log"
        with path.open("wb" if fresh_log else "ab") as out:
            proc = subprocess.Popen(
                list(argv), env={**self.env, **(env or {})}, cwd=cwd, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        child = Child(name, proc, path)
        self.children.append(child)
        info = _stat(proc.pid)
        if info is not None:
            self.seen.add((proc.pid, info[1]))
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def run(self, name: str, argv: Sequence[str], *, timeout_s: float,
            env: Mapping[str, str] | None = None) -> tuple[int, str]:
        """Run ``argv`` to completion (bounded); return its exit code and its log's tail."""
        child = self.start(name, argv, env=env, fresh_log=True)
        try:
            code = child.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(child)
            return -1, f"timed out after {timeout_s:.0f} s\n" + child.tail()
        except BaseException:  # interrupted while waiting: the command must not outlive us
            self.stop(child)
            raise
        self._forget(child)
        return code, child.tail()

    def remember_descendants(self) -> None:
        """Record the children's current descendants (to check later that none survived)."""
        for child in self.children:
            self.seen.update(descendants(child.pid))

    def survivors(self) -> list[ProcKey]:
        """Processes this supervisor ever saw (children, recorded descendants) still running."""
        return sorted(k for k in self.seen if alive(k))

    # --- stopping ----------------------------------------------------------------------------
    def stop(self, child: Child) -> None:
        """Stop one child and everything it spawned."""
        self._stop([child])
        self._forget(child)

    def stop_all(self) -> None:
        """Stop every child, newest first, and their descendants (idempotent)."""
        children, self.children = self.children[::-1], []
        if children:
            self._stop(children)

    def _forget(self, child: Child) -> None:
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def _stop(self, children: Sequence[Child]) -> None:
        family: list[ProcKey] = []
        for child in children:
            family.extend(descendants(child.pid))
        self.seen.update(family)
        running = [c for c in children if c.proc.poll() is None]
        for child in running:
            _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM: killing it", child.name, child.pid)
        for child in children:  # the groups: whatever the leader left behind in them
            _signal_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)
        # descendants that started sessions of their own: SIGTERM, a moment, then SIGKILL
        left = [k for k in family if alive(k)]
        for key in left:
            _signal_pid(key[0], signal.SIGTERM)
        end = time.monotonic() + 5
        while time.monotonic() < end and any(alive(k) for k in left):
            time.sleep(0.1)
        for key in left:
            if alive(key):
                _signal_pid(key[0], signal.SIGKILL)

    # --- signals -----------------------------------------------------------------------------
    def handle_signals(self) -> None:
        """Turn SIGTERM, SIGINT and SIGHUP into :class:`~simulation.errors.Interrupted` (main
        thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, _raise_interrupted)

    def restore_signals(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def close(self) -> None:
        """Stop everything, restore signal handlers, drop the ``atexit`` hook.

        While stopping, further termination signals are ignored (a second Ctrl-C must not
        abort the clean-up half-way).
        """
        if self._previous:
            for sig in self._previous:
                signal.signal(sig, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            self.restore_signals()
            atexit.unregister(self.stop_all)

    def __enter__(self) -> ProcessSupervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (our children lead their own groups)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
