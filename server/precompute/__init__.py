"""Precompute: batch scoring of an input file into the prediction store, resumable.

Owns the scoring job (:func:`precompute`), its input readers (CSV, NPZ, Parquet) and the
resolution of a model and version or alias into what the server's inference service loads
(:mod:`server.precompute.resolve`, shared with :mod:`server.worker`). Predictions and runs are
stored through :mod:`registry.predictions`; ``GET /api/v1/models/{m}/predictions/{key}`` answers
from them. May import: ``registry``, the shared core, ``server.inference``, numpy; pyarrow only
for Parquet files. ``edgefleet server precompute`` is its command.
"""

from server.precompute.inputs import InputTable, open_input
from server.precompute.job import DEFAULT_CHUNK_SIZE, PrecomputeReport, precompute
from server.precompute.resolve import make_service, resolve_target, target_of

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "InputTable",
    "PrecomputeReport",
    "make_service",
    "open_input",
    "precompute",
    "resolve_target",
    "target_of",
]
