"""``edgefleet server run --workers 2`` as real processes: one ``SO_REUSEPORT`` socket a worker.

A two-worker server on SQLite and 127.0.0.1 (:mod:`server.workers`). Which worker holds a
connection is read from the kernel: the server side of each connection in ``/proc/net/tcp``
(its socket's inode) and the worker whose ``/proc/<pid>/fd`` holds that inode. A burst of
keep-alive connections reaches both workers; a killed worker is replaced while the other
answers; SIGTERM to the supervisor stops every worker gracefully and exits 0; a port in use,
by another process or by another ``--workers`` server, is refused in one line; workers that
exit before serving make the supervisor give up.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from server.workers import MAX_START_FAILURES, Supervisor, WorkersError, WorkerSpec
from tests.server.processes import CLI, QUIET, Proc, server_env, start_server

T = TypeVar("T")
ESTABLISHED, LISTEN = "01", "0A"
BURST = 32


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(p) for p in text.split())


def _port(proc: Proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def _tcp(port: int) -> list[tuple[int, str, int]]:
    """``(remote port, state, inode)`` of every IPv4 socket whose local port is ``port``."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if int(local.rsplit(":", 1)[1], 16) == port:
            rows.append((int(remote.rsplit(":", 1)[1], 16), state, inode))
    return rows


def _owners(pids: list[int]) -> dict[int, int]:
    """``{socket inode: pid}`` over the open files of ``pids``."""
    owners = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:  # closed meanwhile
                continue
            match = re.fullmatch(r"socket:\[(\d+)\]", target)
            if match:
                owners[int(match.group(1))] = pid
    return owners


def _listeners(proc: Proc) -> set[int]:
    """The worker pids that have a socket listening on the server's port."""
    port = _port(proc)
    owners = _owners(_children(proc.popen.pid))
    return {owners[inode] for _, state, inode in _tcp(port) if state == LISTEN and inode in owners}


def _until(what: str, check: Callable[[], T | None], timeout: float = 90.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _both_listening(proc: Proc) -> set[int]:
    """Wait until each of the two workers listens (the ready check answers with the first)."""
    def both() -> set[int] | None:
        assert proc.alive(), proc.tail()
        pids = _listeners(proc)
        return pids if len(pids) == 2 and pids == set(_children(proc.popen.pid)) else None
    return _until("both workers listening", both)


def _get(sock: socket.socket, path: str = "/api/v1/health/live") -> bytes:
    """One keep-alive request on ``sock``; the status line of its answer."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    assert match, head
    length = int(match.group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n", 1)[0]


def _burst(port: int, n: int) -> list[socket.socket]:
    """``n`` connections opened at once (non-blocking connects, then all awaited)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    for s in socks:
        s.setblocking(False)
        assert s.connect_ex(("127.0.0.1", port)) in (0, 115)  # EINPROGRESS
    pending = list(socks)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], 1.0)
        for s in writable:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            pending.remove(s)
    assert not pending, f"{len(pending)} connections not established"
    for s in socks:
        s.setblocking(True)
        s.settimeout(30)
    return socks


def _run_cli(port: int, root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **QUIET, **server_env(root, f"sqlite:///{root / 'other.db'}")}
    return subprocess.run([*CLI, "server", "run", "--host", "127.0.0.1", "--port", str(port),
                           "--workers", "2"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    root = tmp_path_factory.mktemp("workers")
    proc = start_server(root, f"sqlite:///{root / 'workers.db'}", workers=2)
    try:
        _both_listening(proc)
        yield proc
    finally:
        proc.stop()


def test_a_burst_of_connections_reaches_both_workers(server: Proc) -> None:
    port, workers = _port(server), _both_listening(server)
    socks = _burst(port, BURST)
    try:
        assert {_get(s) for s in socks} == {b"HTTP/1.1 200 OK"}  # each accepted and answered
        owners = _owners(sorted(workers))
        by_client = {remote: owners.get(inode) for remote, state, inode in _tcp(port)
                     if state == ESTABLISHED}
        held = [by_client.get(s.getsockname()[1]) for s in socks]
        assert set(held) <= workers, held  # every connection is held by one of the workers
        shares = {pid: held.count(pid) for pid in workers}
        assert all(0 < n < BURST for n in shares.values()), shares
    finally:
        for s in socks:
            s.close()


def test_a_killed_worker_is_replaced_while_the_other_answers(server: Proc) -> None:
    port, before = _port(server), _both_listening(server)
    victim = min(before)
    owned = _owners([victim])
    sockets = {inode for _, state, inode in _tcp(port)
               if state == LISTEN and owned.get(inode) == victim}
    assert sockets
    os.kill(victim, signal.SIGKILL)
    # its descriptors go before its socket does: wait for the socket itself
    _until("the killed worker's socket closed",
           lambda: not sockets & {inode for _, _, inode in _tcp(port)})
    for _ in range(5):  # the survivor's socket takes every new connection meanwhile
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            assert _get(s) == b"HTTP/1.1 200 OK"
    after = _both_listening(server)
    assert victim not in after and len(after & before) == 1
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        assert _get(s) == b"HTTP/1.1 200 OK"
    assert f"(pid {victim}) exited (signal SIGKILL); restarting it" in server.tail(20000)


def test_another_workers_server_on_the_same_port_is_refused(server: Proc, tmp_path: Path) -> None:
    # with SO_REUSEPORT it would silently share the port with the running server
    port = _port(server)
    result = _run_cli(port, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: " \
                                    "Address already in use", result.stderr
    assert len(_listeners(server)) == 2


def test_a_port_taken_by_another_process_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_cli(port, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"], lines
    assert "Traceback" not in result.stdout + result.stderr


def test_sigterm_stops_every_worker_gracefully_and_exits_0(tmp_path: Path) -> None:
    proc = start_server(tmp_path, f"sqlite:///{tmp_path / 'stop.db'}", workers=2,
                        env={"EDGEFLEET_SERVER_LOG_LEVEL": "INFO"})
    try:
        workers = _both_listening(proc)
        os.kill(proc.popen.pid, signal.SIGTERM)  # the supervisor only, not its process group
        assert proc.popen.wait(timeout=60) == 0, proc.tail()
        for pid in workers:  # gone (reaped), after uvicorn's shutdown and the application's
            assert not Path(f"/proc/{pid}").exists()
            assert f"Finished server process [{pid}]" in proc.tail(50000)
        assert proc.tail(50000).count("Application shutdown complete.") == 2
    finally:
        proc.stop()


class _FailingSpec(WorkerSpec):
    """Workers that exit with status 3 at once, as one whose application does not start."""

    def argv(self, index: int, ready_fd: int) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit(3)"]


def test_workers_that_exit_before_serving_make_the_supervisor_give_up() -> None:
    supervisor = Supervisor(_FailingSpec("127.0.0.1", 0, {}, os.getpid()), 2)
    with pytest.raises(WorkersError) as caught:
        supervisor.run()
    message = str(caught.value)
    assert "\n" not in message
    assert f"exited before serving {MAX_START_FAILURES} times in a row (last: status 3" in message
    assert all(slot.popen is None for slot in supervisor.slots)
