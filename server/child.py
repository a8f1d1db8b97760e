"""A Python child process the server talks to over a socket pair (a base for the log's children).

:class:`ChildProcess` starts ``python -c PROGRAM FD`` with one end of a socket pair passed as
``FD`` (nothing secret on the command line: the program reads its settings from the socket) and
keeps the other end as a :class:`multiprocessing.connection.Connection`; :meth:`stop` closes it,
which the child takes as its cue to finish and exit, and waits for it. The inference log's
writer (:mod:`server.evidence.writer_process`) and the access log's line writer
(:mod:`server.log_process`) are its two kinds.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from multiprocessing.connection import Connection

__all__ = ["ChildProcess"]


class ChildProcess:
    """The server's end of a child process (see the module notes)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    def _spawn(self, program: str) -> Connection:
        """Start ``python -c program FD``; the server's end of its socket (``OSError`` when it
        cannot start)."""
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", program, str(theirs.fileno())],
                                          pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        return self._conn

    def stop(self, timeout: float = 10.0) -> None:
        """Close the socket (the child exits when it sees it closed) and wait for the child
        (killed after ``timeout`` seconds)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
