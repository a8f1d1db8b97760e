"""Evidence on every version: the inference log's writer, delayed labels, per-version monitoring.

May import: the registry, the shared core, sqlalchemy/sqlmodel (no FastAPI: routes live in
:mod:`server.api.routes`).

Modules
-------
``writer``   :class:`InferenceLog`, the background writer (bounded queue, batches, retention)
``records``  :class:`Answer`, the records a batch of answers becomes, and writing a batch
``writer_process``  the child process that writes the batches, off the server's GIL
``capture``  :func:`logged_predict`, the V2 path's hook that hands each answer to the writer
``monitor``  :func:`monitor`, per-version figures computed in the database
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.evidence.capture import logged_predict
    from server.evidence.monitor import MonitorReport, VersionMonitor
    from server.evidence.writer import InferenceLog, LogStats

#: Where each public name lives; imported on first use, so that the inference log's child
#: process (``python -c "from server.evidence.writer_process import main"``) imports only what
#: writing needs, not FastAPI through ``capture``.
_HOMES = {
    "InferenceLog": "writer", "LogStats": "writer", "MonitorReport": "monitor",
    "VersionMonitor": "monitor", "logged_predict": "capture",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = [
    "InferenceLog",
    "LogStats",
    "MonitorReport",
    "VersionMonitor",
    "logged_predict",
]
