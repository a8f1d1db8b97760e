"""The rollout controller: a thread of the server process that ticks every active rollout.

Owns :class:`~server.rollouts.controller.RolloutController`; the logic it drives is
:mod:`registry.rollouts`. May import ``registry`` and the server's settings; no HTTP.
"""

from server.rollouts.controller import RolloutController

__all__ = ["RolloutController"]
