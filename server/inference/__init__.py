"""Fallback inference in the Open Inference Protocol (V2) (the tensor codec is the shared core's
:mod:`edgefleet.v2`, which the edge agent's local endpoint uses too).

``service``    :class:`InferenceService`: resolve from the database, load and run a version
               (batch jobs, the broker workers)
``source``     the :class:`~server.inference.source.ModelSource` protocol of the hot path (no
               database or HTTP imports: a process without a database implements it)
``db_source``  the server's source: the registry database and the artifact store
``table``      :class:`~server.inference.table.ServingTable`: entries in memory, refreshed when
               the source's generation changes (the staleness bound)
``batcher``    dynamic micro-batching of one loaded version over its interpreters
``pool``       loaded versions (one interpreter per pool thread), cached by content
``serving``    :class:`~server.inference.serving.Serving`: resolution (rollouts, aliases) and runs
``answer``     one V2 request from raw body to encoded answer, logged off the request's path

May import: ``registry``, the shared core, ``server.errors``, ``server.evidence.writer``,
``server.state`` (``answer`` only), numpy, sqlalchemy/sqlmodel (``service``, ``db_source``),
starlette.
"""

from server.inference.service import InferenceService, Target

__all__ = ["InferenceService", "Target"]
