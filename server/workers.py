"""Several uvicorn worker processes, each listening on its own ``SO_REUSEPORT`` socket.

``edgefleet server run --workers N`` (N > 1) runs :func:`run`: this process supervises N worker
processes, fresh interpreters started as ``python -m server.workers`` that serve the
application of ``server.main:create_worker_app`` (settings from the inherited environment,
``EDGEFLEET_SERVER_ENV_FILE`` included). uvicorn's own ``workers=N`` shares one listening socket
among its workers, and the worker whose event loop wakes first accepts every pending
connection, so a burst of new keep-alive connections tends to land on one worker. Here each
worker binds its own socket to the same address with ``SO_REUSEPORT``, and the kernel spreads
incoming connections over the listening sockets by their address hash.

The supervisor

* first binds the address once *without* ``SO_REUSEPORT`` and closes it again
  (:func:`check_free`), so a port another process listens on is refused with one line
  (:class:`WorkersError`) before any worker starts, instead of being silently shared; port 0
  becomes the port that probe was given, so every worker listens on the same one;
* starts the workers; each writes one byte to a pipe once uvicorn accepts connections (its
  socket starts listening only then: a worker still starting gets no connections);
* restarts a worker that exits while the server runs (the connections it held, and those
  queued on its socket that it had not accepted yet, are lost with it), after a back-off that
  doubles for a worker that dies again within :data:`STABLE_S` (from :data:`BACKOFF_S` to
  :data:`BACKOFF_MAX_S`), and gives up (:class:`WorkersError`, the other workers stopped) when
  one exits before serving :data:`MAX_START_FAILURES` times in a row;
* on SIGINT or SIGTERM sends SIGTERM to every worker (uvicorn's graceful shutdown, then the
  application's lifespan shutdown, which flushes the inference log) and waits for them, at most
  :data:`STOP_TIMEOUT_S` before killing a worker. SIGTERM for SIGINT too: the workers are in the
  supervisor's process group, so a Ctrl+C in a terminal reaches them already, and a second
  SIGINT is uvicorn's "exit now, skip the shutdown".

A worker also stops (gracefully) when its supervisor is gone, so that a killed supervisor
leaves no worker holding the port. Where ``SO_REUSEPORT`` does not spread connections (it does
not exist, or is not Linux's: on macOS and the BSDs the newest socket takes every connection),
:func:`run` falls back to ``uvicorn.run(workers=N)``.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from server.errors import ServerError
from server.proxy import uvicorn_options

__all__ = ["APP", "WorkersError", "check_free", "listening_socket", "reuseport_balances", "run"]

APP = "server.main:create_worker_app"
BACKLOG = 2048  #: uvicorn's default listen backlog
MAX_START_FAILURES = 3  #: a worker exiting before it serves this many times in a row: give up
BACKOFF_S = 0.5  #: delay before restarting a worker that exited
BACKOFF_MAX_S = 10.0
STABLE_S = 30.0  #: a worker that served this long restarts after the shortest back-off
STOP_TIMEOUT_S = 30.0  #: how long a worker may take to stop after SIGTERM before it is killed
TICK_S = 0.2
STARTUP_FAILURE = 3  #: a worker's exit status when its application did not start (as uvicorn)

log = logging.getLogger("edgefleet.server.workers")


class WorkersError(ServerError):
    """The workers cannot serve: the port is in use, or a worker keeps failing at start-up."""


def reuseport_balances() -> bool:
    """Whether ``SO_REUSEPORT`` spreads connections over the sockets sharing a port (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn's Config.bind_socket


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_free(host: str, port: int) -> int:
    """Bind ``host:port`` without ``SO_REUSEPORT`` and close it again; return the port bound
    (the one the kernel chose when ``port`` is 0).

    Raises
    ------
    WorkersError
        Something listens there already (another process, or another ``--workers`` server),
        or the address cannot be bound at all.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is ok
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise WorkersError(f"cannot listen on {_address(host, port)}: {reason}") from None
        return int(probe.getsockname()[1])


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEADDR`` and ``SO_REUSEPORT``; uvicorn
    calls ``listen`` on it once the application has started."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run(host: str, port: int, workers: int, tls: Mapping[str, Any]) -> None:
    """Serve with ``workers`` processes until SIGINT or SIGTERM (see the module notes).

    Parameters
    ----------
    host, port
        The address every worker listens on.
    workers
        How many worker processes.
    tls
        uvicorn's TLS options (``ssl_certfile``, ``ssl_keyfile``, ...; empty: plain HTTP).

    Raises
    ------
    WorkersError
        The port is in use, or a worker kept exiting before it served.
    """
    if not reuseport_balances():
        uvicorn.run(APP, factory=True, host=host, port=port, workers=workers, backlog=BACKLOG,
                    **uvicorn_options(tls))
        return
    port = check_free(host, port)
    log.info("%d workers on %s, each with its own SO_REUSEPORT socket", workers,
             _address(host, port))
    Supervisor(WorkerSpec(host, port, dict(tls), os.getpid()), workers).run()


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker process is started with."""

    host: str
    port: int
    tls: dict[str, Any]
    parent: int  #: the supervisor's pid (a worker stops when its parent changes)

    def argv(self, index: int, ready_fd: int) -> list[str]:
        spec = {"host": self.host, "port": self.port, "tls": self.tls, "parent": self.parent,
                "index": index, "ready_fd": ready_fd}
        return [sys.executable, "-m", "server.workers", json.dumps(spec)]


@dataclass
class _Slot:
    """One worker's place: its current process and its restart history."""

    index: int
    popen: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  #: read end of the pipe the worker writes to once it serves
    ready: bool = False
    started: float = 0.0
    start_failures: int = 0  #: exits before serving, in a row
    quick_deaths: int = 0  #: exits within STABLE_S of starting, in a row
    restart_at: float | None = None


def _status(code: int) -> str:
    """``status 1`` or ``signal SIGKILL`` for a :class:`subprocess.Popen` return code."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class Supervisor:
    """Starts, watches, restarts and stops the worker processes (see the module notes)."""

    def __init__(self, spec: WorkerSpec, count: int) -> None:
        self.spec = spec
        self.slots = [_Slot(i + 1) for i in range(count)]
        self._signal: int | None = None

    def run(self) -> None:
        """Until SIGINT or SIGTERM; then every worker is stopped (also when giving up)."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for slot in self.slots:
                self._start(slot)
            while self._signal is None:
                self._tick()
            log.info("%s received: stopping the workers", signal.Signals(self._signal).name)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        self._signal = sig

    def _start(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        try:
            slot.popen = subprocess.Popen(self.spec.argv(slot.index, write_fd),
                                          pass_fds=(write_fd,))
        except OSError as exc:
            os.close(read_fd)
            raise WorkersError(f"cannot start worker {slot.index}: {exc}") from None
        finally:
            os.close(write_fd)
        slot.ready_fd, slot.ready = read_fd, False
        slot.started, slot.restart_at = time.monotonic(), None

    def _tick(self) -> None:
        waiting = {s.ready_fd: s for s in self.slots if s.ready_fd is not None}
        readable, _, _ = select.select(list(waiting), [], [], TICK_S)
        for fd in readable:
            self._read_ready(waiting[fd])
        now = time.monotonic()
        for slot in self.slots:
            if slot.popen is not None and slot.popen.poll() is not None:
                self._reap(slot, now)
            elif slot.popen is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)

    def _read_ready(self, slot: _Slot) -> None:
        assert slot.ready_fd is not None and slot.popen is not None
        if os.read(slot.ready_fd, 1):  # b"" at end of file: it exited before serving
            slot.ready, slot.start_failures = True, 0
            log.info("worker %d (pid %d) serving", slot.index, slot.popen.pid)
        self._close_ready(slot)

    def _close_ready(self, slot: _Slot) -> None:
        if slot.ready_fd is not None:
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def _reap(self, slot: _Slot, now: float) -> None:
        assert slot.popen is not None and slot.popen.returncode is not None
        pid, code = slot.popen.pid, slot.popen.returncode
        self._close_ready(slot)
        slot.popen = None
        if not slot.ready:
            slot.start_failures += 1
            if slot.start_failures >= MAX_START_FAILURES:
                raise WorkersError(
                    f"worker {slot.index} exited before serving {slot.start_failures} times in "
                    f"a row (last: {_status(code)}; see the log above); the server stops")
        quick = now - slot.started < STABLE_S
        slot.quick_deaths = slot.quick_deaths + 1 if quick else 1
        delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (slot.quick_deaths - 1))
        slot.restart_at = now + delay
        log.warning("worker %d (pid %d) exited (%s); restarting it in %.1f s",
                    slot.index, pid, _status(code), delay)

    def _stop_all(self) -> None:
        live = [s.popen for s in self.slots if s.popen is not None and s.popen.poll() is None]
        for popen in live:
            popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for popen in live:
            try:
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d still running %.0f s after SIGTERM: killed", popen.pid,
                          STOP_TIMEOUT_S)
                popen.kill()
                popen.wait()
        for slot in self.slots:
            self._close_ready(slot)
            slot.popen = None


class _ReadyServer(uvicorn.Server):
    """uvicorn's server that writes one byte to ``ready_fd`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, ready_fd: int) -> None:
        super().__init__(config)
        self._ready_fd = ready_fd

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            os.write(self._ready_fd, b"1")
        os.close(self._ready_fd)


def _watch_parent(parent: int) -> None:
    """Stop this worker (gracefully, through uvicorn's signal handler) once its parent is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker(argv: list[str]) -> int:
    """One worker process: bind the socket, serve until SIGTERM; the exit status."""
    spec = json.loads(argv[0])
    host, port, index = str(spec["host"]), int(spec["port"]), int(spec["index"])
    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"error: worker {index} cannot listen on {_address(host, port)}: {reason}",
              file=sys.stderr)
        return 1
    config = uvicorn.Config(APP, factory=True, host=host, port=port, backlog=BACKLOG,
                            **uvicorn_options(spec["tls"]))
    server = _ReadyServer(config, int(spec["ready_fd"]))

    def stop(_sig: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    # Before uvicorn installs its handlers, a signal stops the server once it has started.
    # uvicorn raises the signal it stopped for again once it is done: then this handler runs,
    # and the worker exits with status 0 after the log's last lines are written.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    threading.Thread(target=_watch_parent, args=(int(spec["parent"]),), daemon=True,
                     name="parent-watch").start()
    server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
