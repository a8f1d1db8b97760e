"""The server's JSON log lines: the formatter, and the line of a deferred record without a record.

:class:`JsonFormatter` makes one JSON object per record (time, level, logger, message, every
``extra`` field); :func:`json_line` makes the same line from what a deferred record holds
(:meth:`server.logs.BackgroundHandler.defer`), without making the record; :func:`record_at`
makes that record when one is needed. :func:`pieces` joins lines into writes of at most
``PIPE_BUF`` bytes cut at line ends, so that two processes writing one stream
(:mod:`server.log_process`) never interleave within a line. Used by the server's log writer
(:mod:`server.logs`) and by the child process that writes the access log's lines.
"""

from __future__ import annotations

import json
import logging
import math
import select
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["PIPE_BUF", "STANDARD", "JsonFormatter", "iso_millis", "json_line", "pieces",
           "record_at"]

#: The most bytes one ``write`` to a pipe is guaranteed to put in one piece.
PIPE_BUF: int = getattr(select, "PIPE_BUF", 4096)

STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}
#: ``json.dumps(..., default=str)`` without building an encoder per record.
_ENCODER = json.JSONEncoder(default=str)
#: What ``_ENCODER.encode`` runs, made once (``encode`` makes it again on every call), for the
#: writer thread's lines; ``None`` without the C accelerator. It keeps no circular-reference
#: marks: a line whose fields refer to themselves fails (``RecursionError``) instead of raising
#: ``ValueError``, and either is reported as a line that could not be made.
_MAKE = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE = (None if _MAKE is None else _MAKE(
    None, _ENCODER.default, json.encoder.encode_basestring_ascii, None,
    _ENCODER.key_separator, _ENCODER.item_separator, False, False, True))


def _encode(out: dict[str, Any]) -> str:
    """``_ENCODER.encode(out)`` (see ``_C_ENCODE``)."""
    if _C_ENCODE is None:
        return _ENCODER.encode(out)
    return "".join(_C_ENCODE(out, 0))
_SECONDS: dict[int, str] = {}  # epoch second → its ISO text up to the seconds (a few entries)


def iso_millis(created: float) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``, the date and
    time text of a second computed once (the microseconds rounded as ``datetime`` rounds them)."""
    frac, whole = math.modf(created)
    micros = round(frac * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:
        second, micros = second - 1, micros + 1_000_000
    prefix = _SECONDS.get(second)
    if prefix is None:
        if len(_SECONDS) > 64:
            _SECONDS.clear()
        prefix = _SECONDS[second] = datetime.fromtimestamp(second, UTC).isoformat()[:19]
    return f"{prefix}.{micros // 1000:03d}+00:00"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": iso_millis(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


def record_at(logger: logging.Logger, created: float, level: int, msg: str,
              args: tuple[Any, ...], extra: dict[str, Any] | None = None, *,
              pathname: str = "", lineno: int = 0) -> logging.LogRecord:
    """The record ``logger.makeRecord`` makes for ``msg % args``, dated ``created`` (a
    ``time.time()`` taken when the event happened)."""
    record = logger.makeRecord(logger.name, level, pathname, lineno, msg, args, None,
                               extra=extra)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    record.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
    return record


def json_line(logger: logging.Logger | str, created: float, level: int, msg: str,
              args: tuple[Any, ...], extra: dict[str, Any]) -> str:
    """What :class:`JsonFormatter` formats :func:`record_at`'s record to (for ``extra`` fields
    that name no attribute of a record, as ``makeRecord`` requires, and no exception);
    ``logger`` may be given by name."""
    out = {
        "time": iso_millis(created),
        "level": logging.getLevelName(level),
        "logger": logger if isinstance(logger, str) else logger.name,
        "message": msg % args if args else msg,
    }
    names = tuple(extra)
    private = _PRIVATE.get(names)
    if private is None:
        if len(_PRIVATE) > 256:
            _PRIVATE.clear()
        private = _PRIVATE[names] = any(key.startswith("_") for key in names)
    if private:
        out.update({k: v for k, v in extra.items() if not k.startswith("_")})
    else:
        out.update(extra)
    return _encode(out)


#: Whether a tuple of ``extra`` field names holds one that starts with ``_`` (left out).
_PRIVATE: dict[tuple[str, ...], bool] = {}


def pieces(lines: Sequence[str], limit: int = PIPE_BUF) -> list[str]:
    """``lines`` (each ending in a newline) joined into pieces of at most ``limit`` characters,
    cut only at line ends (a longer line is a piece of its own): a piece of ASCII lines (JSON
    lines are) goes to a pipe in one ``write``, whole."""
    out: list[str] = []
    start, size = 0, 0
    for i, line in enumerate(lines):
        if i > start and size + len(line) > limit:
            out.append("".join(lines[start:i]))
            start, size = i, 0
        size += len(line)
    if start < len(lines):
        out.append("".join(lines[start:]))
    return out
