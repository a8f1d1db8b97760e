"""The access log's JSON lines made and written in a process of their own, off the server's GIL.

:class:`server.logs.BackgroundHandler` hands its thread each round's records. Under load most
are deferred ones (:meth:`~server.logs.BackgroundHandler.defer`: the access log's tuple per
request), and making their JSON lines costs the thread, and the event loop waiting for the GIL
meanwhile, a few microseconds each. With a :class:`LineProcess` (``configure_logging(...,
line_process=True)``, what the server does for its JSON lines on stderr), the thread sends a
round's deferred records, pickled as plain tuples, to a child Python process, which makes the
same lines (:func:`server.log_lines.json_line`) and writes them to the same stderr. Both
processes write at most ``PIPE_BUF`` bytes at a time, cut at line ends
(:func:`server.log_lines.pieces`), so their lines
never interleave within a line, even on a pipe. Records made on the way (warnings, errors) are
still written by the thread, so within one round (200 ms) a warning and an access line may
appear in another order than they happened; each line carries its time.

The child starts with the first round that has deferred records, runs at a lower scheduling
priority (``NICE``), and exits when the socket closes, after writing what it was sent. If it
cannot start or goes away, the thread writes everything itself from then on.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from multiprocessing.connection import Connection
from typing import Any

from server.child import ChildProcess
from server.log_lines import json_line, pieces

__all__ = ["NICE", "LineProcess", "write_fully"]

#: How much lower the child's scheduling priority is than the server's.
NICE = 10
#: How long the child may take to start.
START_TIMEOUT_S = 30.0
_CHILD = ("import sys; from server.log_process import main; "
          "sys.exit(main(int(sys.argv[1])))")

#: A deferred record as sent: logger name, time, level, message, arguments, ``extra`` fields.
Line = tuple[str, float, int, str, tuple[Any, ...], dict[str, Any]]


class LineProcess(ChildProcess):
    """The child process that makes and writes deferred JSON lines (see the module notes)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def send(self, lines: list[Line]) -> bool:
        """Hand ``lines`` to the child; ``False`` when it is (or just went) away or they do not
        pickle, and the caller writes them itself."""
        if self.failed:
            return False
        try:
            data = pickle.dumps(lines, protocol=5)
        except Exception:  # an extra field that does not pickle: this round stays here
            return False
        try:
            if self._conn is None:
                self._start()
            assert self._conn is not None
            self._conn.send_bytes(data)
            return True
        except (OSError, EOFError):
            self.failed = True
            self.stop()
            return False

    def _start(self) -> None:
        conn = self._spawn(_CHILD)
        if not conn.poll(START_TIMEOUT_S) or conn.recv_bytes() != b"ready":
            raise OSError("the log's line process did not start")


def main(fd: int) -> int:
    """The child: make and write the lines of every batch received on ``fd`` until it closes."""
    with contextlib.suppress(OSError):
        os.nice(NICE)
    conn = Connection(fd)
    conn.send_bytes(b"ready")
    out = sys.stderr.fileno()
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return 0
        lines = []
        for name, created, level, msg, args, extra in pickle.loads(data):
            try:
                lines.append(json_line(name, created, level, msg, args, extra) + "\n")
            except Exception as exc:  # a line that cannot be made: said, and the rest written
                lines.append(f"--- a deferred log line could not be made: {exc!r}\n")
        for piece in pieces(lines):
            write_fully(out, piece.encode("utf-8", "backslashreplace"))


def write_fully(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a pipe takes a piece of at most
    ``PIPE_BUF`` bytes whole; a longer line may go in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
