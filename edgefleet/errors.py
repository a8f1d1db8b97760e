"""Exceptions of the shared core.

::

    EdgeFleetError
    ├── PlanError                 a plan or its manifest is unusable
    │   ├── PlanFormatError       truncated/corrupt flatbuffer, missing signature, bad manifest
    │   ├── PlanMismatchError     manifest and plan (or weights and plan) do not belong together
    │   └── WeightsError          wrong weight names, shapes or dtypes; unreadable weights file
    ├── InputError                an input tensor of the wrong shape, dtype or content
    │   └── TensorError           a V2 request the codec refuses (edgefleet.v2)
    ├── RunConfigError            a federated run's settings that cannot be used
    │                             (edgefleet.run_settings; also a ValueError)
    ├── InterpreterUnavailable    no TFLite interpreter is installed
    ├── SignatureError            a version signature (or a key endorsement) does not verify
    ├── SummaryError              a drift summary that is malformed or cannot be merged
    ├── RegistryError             registry.errors
    ├── ServerError               server.errors
    ├── AgentError                edge_client.errors
    ├── FederationError           aggregation.errors
    ├── AuthoringError            authoring.errors
    └── SimulationError           simulation.errors

Each package's root error derives from :class:`EdgeFleetError`, so one ``except EdgeFleetError``
catches every error EdgeFleet raises. The server translates these into HTTP status codes; nothing
below it knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class EdgeFleetError(Exception):
    """Root of every error raised by EdgeFleet (the shared core and every package)."""


class PlanError(EdgeFleetError):
    """A model plan, its manifest or its weights cannot be used."""


class PlanFormatError(PlanError):
    """The plan file or manifest is malformed (truncated, corrupt, missing a signature)."""


class PlanMismatchError(PlanError):
    """Two artifacts that must belong together do not (manifest vs plan, weights vs plan)."""


class WeightsError(PlanError):
    """Weights with the wrong names, shapes or dtypes, or an unreadable weights file."""


class InputError(EdgeFleetError):
    """An input of the wrong shape, dtype or content."""


class InterpreterUnavailable(EdgeFleetError):
    """Neither ``ai-edge-litert`` nor ``tflite-runtime`` is installed."""


class SummaryError(EdgeFleetError):
    """A drift summary is malformed, of another schema version, or cannot be merged."""


class SignatureError(EdgeFleetError):
    """A version's signature, or a signing key's endorsement, does not verify."""


def describe_validation(exc: ValidationError, *,
                        name: Callable[[Sequence[str]], str] = ".".join,
                        top: str = "(top level)") -> str:
    """``exc`` as ``WHERE: message`` parts joined by ``; ``, never quoting the value given.

    Parameters
    ----------
    exc : pydantic.ValidationError
        What validation refused.
    name : callable (default: the location's parts joined by dots)
        Turns an error's location (its parts as strings) into the name shown for it.
    top : str (default: ``"(top level)"``)
        Shown for an error of the whole object (an empty location).
    """
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = [str(part) for part in error["loc"]]
        parts.append(f"{name(loc) if loc else top}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
