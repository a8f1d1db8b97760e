"""Flower's simulation runtime, in process, without Ray: for testing the round loop.

:func:`federation` is :func:`simulation.inprocess.federation_nodes`: Flower's real
:class:`InMemoryGrid` over an in-memory ``LinkState`` with virtual SuperNodes, and Flower's
simulation runtime (``vce_api.run_api``) moving every message (TTL, ids, reply checks) to the
``ClientApp``, which :class:`simulation.inprocess.ThreadBackend` calls in worker threads (one
per node unless ``workers`` is given) where Flower's ``RayBackend`` would use Ray actors. It
yields the grid and ``{node_id: partition_id}``.
"""

from __future__ import annotations

from simulation.inprocess import federation_nodes as federation

__all__ = ["federation"]
