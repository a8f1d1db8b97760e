"""Exceptions of the simulation package.

::

    SimulationError              root of every error raised by ``simulation``
    ├── FleetError               a step of the fleet failed (a process did not start or exited,
    │   │                        a deadline passed, the federated run failed or published
    │   │                        nothing); its message names the step and the log to read
    │   └── Interrupted          SIGTERM/SIGINT/SIGHUP arrived: the fleet stops and cleans up
    ├── PartitionError           a data partition cannot be made as asked (more parts than
    │                            examples, a minimum size no draw reaches)
    ├── ConfigError              an experiment file or object is invalid (the key's path is in
    │                            the message), or names data, a plan or a trace that cannot load
    └── ExperimentError          an experiment could not run to the end (the engine failed, a
                                 child process failed, a reference backend is missing)

Errors of the shared core (:class:`edgefleet.errors.EdgeFleetError`) and of the packages the
fleet drives (``aggregation``, ``edge_client``) pass through unchanged.
"""

from __future__ import annotations

import signal

from edgefleet.errors import EdgeFleetError


class SimulationError(EdgeFleetError):
    """Root of every error raised by the simulation package."""


class FleetError(SimulationError):
    """A step of the fleet failed; the message says which and where its log is."""


class Interrupted(FleetError):
    """A termination signal arrived; the fleet stops and cleans up.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signal.Signals(signum).name}")
        self.signum = signum


class PartitionError(SimulationError, ValueError):
    """A partition cannot be made with the given sizes or parameters."""


class ConfigError(SimulationError, ValueError):
    """An experiment is invalid, or names inputs that cannot be loaded."""


class ExperimentError(SimulationError):
    """An experiment could not run to the end; the message says which step and why."""
