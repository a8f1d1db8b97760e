"""One exception root: every package's root error derives from ``EdgeFleetError``, so one
``except`` catches whatever EdgeFleet raises, and the server still maps each to its own status."""

from __future__ import annotations

import pytest

from aggregation.errors import FederationError, RoundFailed
from authoring.errors import AuthoringError, ConversionError
from edge_client.errors import AgentError, ServerRejectedError
from edgefleet.errors import EdgeFleetError, InputError
from edgefleet.run_settings import RunConfigError
from edgefleet.v2 import TensorError
from registry.errors import NotFoundError, RegistryError
from server.errors import ModelUnavailableError, ServerError, status_of
from simulation.errors import FleetError, SimulationError

ONE_OF_EACH: list[tuple[type[EdgeFleetError], EdgeFleetError]] = [
    (RegistryError, NotFoundError("model 'x' not found")),
    (ServerError, ModelUnavailableError("version 1 of 'x' cannot be loaded")),
    (AgentError, ServerRejectedError(404, "no such model")),
    (FederationError, RoundFailed(3, "1 valid report < min_reports=2")),
    (AuthoringError, ConversionError("the converter refused the model")),
    (SimulationError, FleetError("the server did not start")),
    (InputError, TensorError("data contains booleans")),
    (RunConfigError, RunConfigError("run config 'lr': not a number")),
]


@pytest.mark.parametrize(("root", "error"), ONE_OF_EACH,
                         ids=[root.__name__ for root, _ in ONE_OF_EACH])
def test_one_except_catches_an_error_of_every_package(root: type[EdgeFleetError],
                                                      error: EdgeFleetError) -> None:
    assert issubclass(root, EdgeFleetError) and isinstance(error, root)
    try:
        raise error
    except EdgeFleetError as caught:
        assert caught is error


def test_the_server_keeps_each_status_under_one_root() -> None:
    statuses = {type(e).__name__: status_of(e) for _, e in ONE_OF_EACH}
    assert statuses["NotFoundError"] == 404
    assert statuses["ModelUnavailableError"] == 503  # not the root's 400
    assert statuses["TensorError"] == 400
    assert status_of(ServerError("the server itself failed")) == 500
    assert status_of(EdgeFleetError("anything else of ours")) == 400
