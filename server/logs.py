"""Logging set-up of the server process: JSON lines (default) or plain text on stderr.

Records are formatted and written by a background thread (:class:`logging.handlers.QueueListener`):
a request's path only puts its record on a queue, so the access log costs it no formatting and
no blocking write. The listener drains the queue at exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener

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


class _DeferredQueueHandler(QueueHandler):
    """Queue the record as it is: the listener's handler formats it (in its own thread)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: QueueListener | None = None


def _stop_listener() -> None:
    """Write what is queued and stop the writer thread (at exit, or before a reconfiguration)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send EdgeFleet's and uvicorn's logs to stderr in ``fmt`` at ``level`` (written by a
    background thread, see the module notes)."""
    global _listener
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    _stop_listener()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = QueueListener(records, handler, respect_handler_level=True)
    _listener.start()
    atexit.unregister(_stop_listener)
    atexit.register(_stop_listener)
    queued = _DeferredQueueHandler(records)
    for name in ("edgefleet", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [queued]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True  # our access log replaces it
