"""Logging set-up of the server process: JSON lines (default) or plain text on stderr.

Records are formatted and written by a background thread: a request's path only appends its
record to a deque (no lock, no system call, no thread woken), and the writer thread hands what
accumulated to the stream every 200 ms (each round takes the GIL from the thread serving
requests: rarer rounds, fewer hand-overs), so the access log costs a request no formatting and
no blocking write. What is queued is written at exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
from collections import deque
from datetime import UTC, datetime

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _BackgroundHandler(logging.Handler):
    """Appends records to a deque; a thread hands them to ``target`` every ``interval_s``."""

    def __init__(self, target: logging.Handler, interval_s: float = 0.2) -> None:
        super().__init__()
        self.target = target
        self.interval_s = interval_s
        self._records: deque[logging.LogRecord] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)

    def write_queued(self) -> None:
        while self._records:
            self.target.handle(self._records.popleft())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write_queued()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.write_queued()
        super().close()


_background: _BackgroundHandler | None = None


def _stop_background() -> None:
    """Write what is queued and stop the writer thread (at exit, or before a reconfiguration)."""
    global _background
    if _background is not None:
        _background.close()
        _background = None


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send EdgeFleet's and uvicorn's logs to stderr in ``fmt`` at ``level`` (written by a
    background thread, see the module notes)."""
    global _background
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    _stop_background()
    queued = _background = _BackgroundHandler(handler)
    atexit.unregister(_stop_background)
    atexit.register(_stop_background)
    for name in ("edgefleet", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [queued]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True  # our access log replaces it
