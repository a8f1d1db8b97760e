"""Guarded rollouts: a candidate version moved towards ``production`` by a strategy, on evidence.

Owns the rollout logic (no HTTP, no threads): the state machine and its alias moves
(``machine``), the per-step verdict (``judge``), the guards (``guards``), the A/B test
(``stats``), membership of devices and REST callers (``strategies``), the V2 path's routing
snapshot (``routing``) and the read side (``queries``). The tables are
:mod:`registry.models.rollout`; the wire schemas :mod:`edgefleet.rollouts`. The server's
controller (:mod:`server.rollouts`) ticks active rollouts.

May import: the shared ``edgefleet`` core, sqlmodel/sqlalchemy, numpy and the rest of
``registry``. This package's ``__init__`` imports nothing, so :mod:`registry.assignment` can
import ``strategies`` without a cycle.
"""
