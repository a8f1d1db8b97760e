"""Logging set-up of the server process: JSON lines (default) or plain text on stderr.

Records are formatted and written by a background thread: a request's path only appends its
record to a deque (no lock, no system call, no thread woken), and the writer thread hands what
accumulated to the stream every 200 ms (each round takes the GIL from the thread serving
requests: rarer rounds, fewer hand-overs), so the access log costs a request no formatting and
no blocking write. A round formats its records and writes them to the stream a few dozen
lines per ``write`` (``WRITE_CHUNK``, each write at most ``PIPE_BUF`` bytes cut at line ends)
with one ``flush``, not one each. What is queued is written at exit.

A hot path can hand the writer the *making* of its record too (:func:`background_handler`,
:meth:`BackgroundHandler.defer`: the logger, the time the event happened, the message, its
arguments and ``extra`` fields): the request pays for a tuple, the writer thread makes the
:class:`~logging.LogRecord` ``Logger.makeRecord`` would have made, dated when the event happened
(only the thread and process attributes, which no formatter here prints, name the writer's),
and formats it. For the JSON lines of :class:`~server.log_lines.JsonFormatter` it writes the
line that record formats to without making the record at all
(:func:`~server.log_lines.json_line`); with ``configure_logging(..., line_process=True)`` (the
serving process), a child process makes and writes those lines (:mod:`server.log_process`).
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from collections import deque
from typing import Any

from server.log_lines import STANDARD, JsonFormatter, json_line, pieces, record_at
from server.log_process import LineProcess

__all__ = ["BackgroundHandler", "background_handler", "configure_logging"]

#: A deferred record: logger, time, level, message, arguments, ``extra`` fields, source path.
_Deferred = tuple[logging.Logger, float, int, str, tuple[Any, ...], dict[str, Any], str]


class BackgroundHandler(logging.Handler):
    """Appends records to a deque; a thread hands them to ``target`` every ``interval_s``."""

    def __init__(self, target: logging.Handler, interval_s: float = 0.2,
                 lines: LineProcess | None = None) -> None:
        super().__init__()
        self.target = target
        self.interval_s = interval_s
        self.lines = lines  # the child that writes deferred JSON lines (server.log_process)
        self._records: deque[logging.LogRecord | _Deferred] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)

    def defer(self, logger: logging.Logger, created: float, level: int, msg: str,
              args: tuple[Any, ...], extra: dict[str, Any], pathname: str = "") -> None:
        """Queue the record :func:`record_at` makes of these; the writer thread makes it."""
        self._records.append((logger, created, level, msg, args, extra, pathname))

    def write_queued(self) -> None:
        queued = []
        while self._records:
            queued.append(self._records.popleft())
        if not queued:
            return
        target = self.target
        if type(target) is logging.StreamHandler and not target.filters:
            if self.lines is not None and type(target.formatter) is JsonFormatter:
                queued = _send_deferred(self.lines, target, queued)
            _write_all(target, queued)
        else:
            for item in queued:
                try:
                    record = _made(item)
                except Exception:
                    self.handleError(_failure("a deferred log record could not be made"))
                    continue
                target.handle(record)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write_queued()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.write_queued()
        if self.lines is not None:
            self.target.flush()
            self.lines.stop()  # the child writes what it was sent, then exits
        super().close()


def _send_deferred(lines: LineProcess, handler: logging.StreamHandler[Any],
                   queued: list[logging.LogRecord | _Deferred]
                   ) -> list[logging.LogRecord | _Deferred]:
    """Send the deferred records of ``queued`` whose line :func:`json_line` makes to ``lines``
    when ``handler`` writes to this process's stderr; what is left for the thread."""
    if getattr(handler.stream, "fileno", None) is None or _fileno(handler) != _fileno_stderr():
        return queued
    sent = [item for item in queued if isinstance(item, tuple) and STANDARD.isdisjoint(item[5])]
    if not sent or not lines.send([(item[0].name, *item[1:6]) for item in sent]):
        return queued
    handler.flush()  # what the thread wrote before is out before the child's lines
    return [item for item in queued if not (isinstance(item, tuple)
                                            and STANDARD.isdisjoint(item[5]))]


def _fileno(handler: logging.StreamHandler[Any]) -> int:
    try:
        return int(handler.stream.fileno())
    except (OSError, ValueError, AttributeError):
        return -1


def _fileno_stderr() -> int:
    try:
        return sys.stderr.fileno()
    except (OSError, ValueError, AttributeError):
        return -2


def _made(item: logging.LogRecord | _Deferred) -> logging.LogRecord:
    """The record ``item`` is or describes."""
    if not isinstance(item, tuple):
        return item
    logger, created, level, msg, args, extra, pathname = item
    return record_at(logger, created, level, msg, args, extra, pathname=pathname)


def _failure(what: str) -> logging.LogRecord:
    """A record naming what failed, for ``Handler.handleError`` (which reports the exception
    being handled)."""
    return logging.LogRecord("edgefleet.server.logs", logging.ERROR, __file__, 0, what, (), None)


#: Lines per ``write``: each write lets the thread serving requests take the GIL back, so a
#: round never holds it for the whole of its formatting.
WRITE_CHUNK = 64


def _write_all(handler: logging.StreamHandler[Any],
               queued: list[logging.LogRecord | _Deferred]) -> None:
    """What ``handler.handle`` of each queued record writes, ``WRITE_CHUNK`` lines per
    ``write`` and one ``flush`` (a deferred record that :class:`JsonFormatter` formats: its
    line, no record made)."""
    json_lines = type(handler.formatter) is JsonFormatter
    for start in range(0, len(queued), WRITE_CHUNK):
        lines = []
        for item in queued[start : start + WRITE_CHUNK]:
            record = None
            try:
                if json_lines and isinstance(item, tuple) and STANDARD.isdisjoint(item[5]):
                    lines.append(json_line(*item[:6]) + handler.terminator)
                    continue
                record = _made(item)
                lines.append(handler.format(record) + handler.terminator)
            except Exception:
                handler.handleError(record or _failure("a deferred log record could not be made"))
        if lines:
            with handler.lock:  # type: ignore[union-attr]
                try:
                    for piece in pieces(lines):
                        handler.stream.write(piece)
                except Exception:
                    handler.handleError(_failure(f"{len(lines)} log lines could not be written"))
    handler.flush()




def background_handler(logger: logging.Logger, level: int) -> BackgroundHandler | None:
    """The one handler a record of ``logger`` at ``level`` reaches, when it is a
    :class:`BackgroundHandler` and no logger or handler on the way filters (so a deferred
    record is handled exactly as ``logger.handle`` would handle it); else ``None``."""
    found: BackgroundHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return None
        for handler in current.handlers:
            if (found is not None or type(handler) is not BackgroundHandler or handler.filters
                    or level < handler.level):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


_background: BackgroundHandler | None = None


def _stop_background() -> None:
    """Write what is queued and stop the writer thread (at exit, or before a reconfiguration)."""
    global _background
    if _background is not None:
        _background.close()
        _background = None


def configure_logging(level: str = "INFO", fmt: str = "json", *,
                      line_process: bool = False) -> None:
    """Send EdgeFleet's and uvicorn's logs to stderr in ``fmt`` at ``level`` (written by a
    background thread, see the module notes; with ``line_process`` and JSON lines, the deferred
    records' lines by a child process, :mod:`server.log_process`)."""
    global _background
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    _stop_background()
    lines = LineProcess() if line_process and fmt == "json" else None
    queued = _background = BackgroundHandler(handler, lines=lines)
    atexit.unregister(_stop_background)
    atexit.register(_stop_background)
    for name in ("edgefleet", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [queued]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True  # our access log replaces it
