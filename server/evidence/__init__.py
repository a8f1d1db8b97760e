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

from server.evidence.capture import logged_predict
from server.evidence.monitor import MonitorReport, VersionMonitor, monitor
from server.evidence.writer import InferenceLog, LogStats

__all__ = [
    "InferenceLog",
    "LogStats",
    "MonitorReport",
    "VersionMonitor",
    "logged_predict",
    "monitor",
]
