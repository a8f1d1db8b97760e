"""Routing one prediction: the local model, the server's fallback, or a clear refusal.

:class:`InferenceRouter` is the agent's inference path (``Agent.predict`` and the local HTTP
endpoint both call it):

1. The input must be a real numeric array; anything else is an
   :class:`~edge_client.errors.InvalidInputError` at once.
2. When a local model is active and the request is for it (no model/version named, or the
   active one), the local runtime answers. A single example (``sample_shape``) gets a batch axis.
   The answer updates the drift accumulator, counts and latencies of that version.
3. A local :class:`~edgefleet.errors.InputError` (wrong shape, NaN) is final when the fallback
   would ask the server about the *same* model version: the server validates against the same
   manifest, so it is raised as :class:`InvalidInputError` with no network round trip. When the
   server would use another version (the assignment moved on, or the caller named one), the
   input is "unsupported locally" and goes to the fallback.
4. Any other local failure (interpreter error, non-finite output) falls back, and after
   ``failures_before_rollback`` consecutive failures the active model is rolled back.
5. The fallback is ``POST /v2/models/{m}[/versions/{v}]/infer`` with the inference timeout and
   the client's retries. A 400/413/422 from the server is an :class:`InvalidInputError`; a 404
   (and, offline, a named model or version this device does not run) is an
   :class:`~edge_client.errors.UnknownModelError`; an answer the V2 codec (:mod:`edgefleet.v2`)
   cannot read is a :class:`~edge_client.errors.ModelUnavailableError`; an unreachable server
   raises :class:`~edge_client.errors.ModelUnavailableError` too and opens a short cool-down
   (``fallback_cooldown_s``) during which predictions needing the fallback fail at once.

Telemetry describes this device's own model only, so the server never gets a report about a
version it did not give the device:

* local answers count (rows, latency, drift) in the window of the active version that served;
* fallback answers for the device's own model (no model named, or the active/assigned one, any
  version) count as ``fallback`` rows of the device's own version — the active one, or the
  assigned one before anything is installed. Fallback answers for *other* models are proxying
  and are not counted;
* ``errors`` counts failures of the local model only; a failed or refused fallback is the
  server's business and is not reported as an error of any version.

Counts are in rows (examples), not requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np

from edge_client.client import ServerClient
from edge_client.errors import (
    InvalidInputError,
    ModelUnavailableError,
    ServerError,
    ServerRejectedError,
    UnknownModelError,
)
from edge_client.models import ActiveModel, InstalledVersion, ModelManager
from edge_client.settings import AgentSettings
from edge_client.store import LabelStore
from edge_client.telemetry import Telemetry
from edgefleet.errors import EdgeFleetError, InputError
from edgefleet.plan import PlanManifest
from edgefleet.runtime import all_finite
from edgefleet.v2 import (
    TensorError,
    labels_from_response,
    probs_from_response,
    request_from_array,
)
from edgefleet.wire import Assignment


class Prediction(NamedTuple):
    """One answered prediction (an immutable record).

    Attributes
    ----------
    probs : ndarray
        ``float32 [n, n_classes]`` class probabilities.
    classes : list of str
        The most probable class label of each row.
    path : {"local", "fallback"}
        Which path answered.
    model : str
        The model that answered.
    version : int or None
        Its version (``None`` when the server did not say).
    latency_ms : float
        Wall time of the answering call.
    """

    probs: np.ndarray
    classes: list[str]
    path: Literal["local", "fallback"]
    model: str
    version: int | None
    latency_ms: float


def as_features(x: Any) -> np.ndarray:
    """``x`` as a real numeric array, or :class:`InvalidInputError`."""
    if type(x) is np.ndarray and x.dtype.kind in "fiu" and x.ndim:
        return x
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InvalidInputError(f"features are not a rectangular array: {exc}") from exc
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InvalidInputError(f"features must be real numbers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise InvalidInputError("features must be an array, got a scalar")
    return arr


class InferenceRouter:
    """Local inference with fallback to the server (see the module docstring).

    It is given what it uses, not the agent that owns it.

    Parameters
    ----------
    models : ModelManager
        The installed models (the active one answers; a failing one is rolled back).
    telemetry : Telemetry
        Counts, latencies and drift of what the device's own model served.
    labels : LabelStore
        Where :meth:`record_label` stores labelled examples.
    settings : AgentSettings
        ``failures_before_rollback``, ``inference_timeout_s``, ``fallback_cooldown_s``.
    assignment : callable
        The device's current assignment (``None`` before the first poll).
    client : callable
        The server's client (``None`` when the device is not enrolled).
    reject : callable
        Called with a version rolled back after failing to answer, so that it is not
        reinstalled.
    """

    def __init__(
        self,
        models: ModelManager,
        telemetry: Telemetry,
        labels: LabelStore,
        settings: AgentSettings,
        *,
        assignment: Callable[[], Assignment | None],
        client: Callable[[], ServerClient | None],
        reject: Callable[[InstalledVersion], None],
    ) -> None:
        self.models = models
        self.telemetry = telemetry
        self.labels = labels
        self.settings = settings
        self._assignment = assignment
        self._client = client
        self._reject = reject
        self.failures = 0
        self._cooldown_until = 0.0
        self._per_plan: tuple[PlanManifest | None, np.ndarray, np.ndarray] = (
            None, np.empty(0, dtype=object), np.empty(0, dtype=np.float32))

    def reset_failures(self) -> None:
        self.failures = 0

    def _fallback_target(self, model: str | None, version: int | None
                         ) -> tuple[str | None, int | None]:
        a = self._assignment()
        active = self.models.active
        if model is None:
            if a is not None:
                return a.model, version if version is not None else a.version
            if active is not None:
                return active.info.model, version if version is not None else active.info.version
            return None, version
        if version is None and a is not None and a.model == model:
            version = a.version
        return model, version

    def predict(self, x: Any, *, model: str | None = None, version: int | None = None
                ) -> Prediction:
        arr = as_features(x)
        active = self.models.active
        reason = "no local model is active"
        if active is not None and not (
                (model is None or model == active.info.model)
                and (version is None or version == active.info.version)):
            reason = (f"{_describe(model or active.info.model, version)} is not the local model "
                      f"({active.info.model!r} version {active.info.version})")
        elif active is not None:
            runtime = active.runtime
            manifest = runtime.manifest
            feats = arr[None] if arr.shape == runtime.sample_shape else arr
            start = time.perf_counter()
            try:
                probs = runtime.predict(feats)
                cached, labels, zeros = self._per_plan
                if cached is not manifest:
                    _, labels, zeros = self._per_plan = _plan_constants(manifest)
                if not all_finite(probs, zeros):
                    raise EdgeFleetError("the local model answered NaN/inf probabilities")
            except InputError as exc:
                if self._fallback_target(model, version) in (
                        (active.info.model, active.info.version), (None, None)):
                    raise InvalidInputError(str(exc)) from exc
                reason = f"input unsupported by local {active.info.model} v" \
                         f"{active.info.version}: {exc}"
            except (EdgeFleetError, RuntimeError, ValueError) as exc:
                reason = f"the local model failed: {exc}"
                self._local_failure(active, reason)
            else:
                latency = (time.perf_counter() - start) * 1000.0
                self.failures = 0
                info = active.info
                self.telemetry.record_local(manifest, info.version, feats, probs, latency,
                                            model=info.model)
                classes = [labels[probs.argmax()]] if probs.shape[0] == 1 else labels[
                    probs.argmax(axis=1)].tolist()
                return Prediction(probs, classes, "local", info.model, info.version, latency)
        return self._fallback(arr, reason, model, version)

    def _local_failure(self, active: ActiveModel, reason: str) -> None:
        self.failures += 1
        self.telemetry.record_error(active.info.model, active.info.version)
        if self.failures >= self.settings.failures_before_rollback:
            self.failures = 0
            self._reject(active.info)
            self.models.rollback(
                f"{active.info.model} v{active.info.version} failed to answer "
                f"{self.settings.failures_before_rollback} times in a row: {reason}")

    def _fallback(self, arr: np.ndarray, reason: str, model: str | None, version: int | None
                  ) -> Prediction:
        client = self._client()
        active = self.models.active
        if client is None:
            if active is not None:  # it runs a model, and not the one named
                raise UnknownModelError(
                    f"{reason}, and without enrolment there is no server to ask")
            raise ModelUnavailableError(f"{reason}, and without enrolment there is no fallback")
        target, target_version = self._fallback_target(model, version)
        if target is None:
            raise ModelUnavailableError(f"{reason}, and no model is assigned to this device yet")
        wait = self._cooldown_until - time.monotonic()
        if wait > 0:
            raise ModelUnavailableError(
                f"{reason}; the server's fallback was unreachable, next try in {wait:.1f} s")
        input_name = active.runtime.manifest.input.name if active is not None else "x"
        rows = arr[None] if arr.ndim == 1 else arr
        settings = self.settings
        start = time.perf_counter()
        try:
            response = client.infer(target, target_version, request_from_array(rows, input_name),
                                    timeout_s=settings.inference_timeout_s)
            probs = probs_from_response(response, rows.shape[0])
        except TensorError as exc:  # the server's answer, not the caller's input
            raise ModelUnavailableError(f"{reason}; the server's answer is unusable: {exc}"
                                        ) from exc
        except ServerRejectedError as exc:
            if exc.status_code in (400, 413, 422):
                raise InvalidInputError(f"the server refused the input too: {exc.detail}") from exc
            if exc.status_code == 404:
                raise UnknownModelError(
                    f"{_describe(target, target_version)} is neither on this device nor on "
                    f"the server: {exc.detail}") from exc
            raise ModelUnavailableError(f"{reason}; the server's fallback refused: {exc}") from exc
        except ServerError as exc:
            self._cooldown_until = time.monotonic() + settings.fallback_cooldown_s
            raise ModelUnavailableError(f"{reason}; the server's fallback failed: {exc}") from exc
        latency = (time.perf_counter() - start) * 1000.0
        answered = response.model_version
        answered_version = int(answered) if answered and answered.isdigit() else target_version
        classes = labels_from_response(response)
        if classes is None or len(classes) != rows.shape[0]:
            names = active.runtime.manifest.output.class_labels if active is not None else None
            idx = np.argmax(probs, axis=1)
            classes = [names[i] if names and i < len(names) else str(i) for i in idx]
        own = self._own_version()
        if own is not None and target == own[0]:
            self.telemetry.record_fallback(own[0], own[1], int(rows.shape[0]))
        return Prediction(probs, classes, "fallback", response.model_name or target,
                          answered_version, latency)

    def _own_version(self) -> tuple[str, int] | None:
        """The version this device reports on: the active one, else the assigned one."""
        active = self.models.active
        if active is not None:
            return active.info.model, active.info.version
        a = self._assignment()
        return (a.model, a.version) if a is not None else None

    # --- labels ---------------------------------------------------------------------------------
    def record_label(self, x: Any, y: Any) -> int:
        active = self.models.active
        manifest = active.runtime.manifest if active is not None else None
        a = self._assignment()
        model = manifest.name if manifest else (a.model if a else None)
        if model is None:
            raise ModelUnavailableError("no model yet: labelled examples are stored per model")
        arr = as_features(x).astype(np.float32)
        if manifest is not None:
            shape = manifest.input.sample_shape
            if arr.shape == shape:
                arr = arr[None]
            if arr.shape[1:] != shape:
                raise InvalidInputError(
                    f"labelled features have shape {list(arr.shape)}, expected [n, "
                    f"{', '.join(map(str, shape))}]")
        elif arr.ndim == 1:
            arr = arr[None]
        ys = np.atleast_1d(np.asarray(y, dtype=object))
        if ys.ndim != 1 or ys.shape[0] != arr.shape[0]:
            raise InvalidInputError(f"{arr.shape[0]} examples but {ys.size} labels")
        classes = manifest.output.class_labels if manifest else None
        idx = np.asarray([_class_index(v, classes) for v in ys], dtype=np.int64)
        return self.labels.add(model, arr, idx)


def _plan_constants(manifest: PlanManifest) -> tuple[PlanManifest, np.ndarray, np.ndarray]:
    """What every local answer of a plan uses: its class labels as an array, and zeros shaped
    as one answer's probabilities (a dot product with them is finite exactly when the
    probabilities are: :func:`edgefleet.runtime.all_finite`)."""
    labels = np.asarray(manifest.output.class_labels, dtype=object)
    return manifest, labels, np.zeros(manifest.output.n_classes, dtype=np.float32)


def _describe(model: str, version: int | None) -> str:
    """``model 'm'`` or ``version 3 of 'm'`` (never a ``vNone``)."""
    return f"model {model!r}" if version is None else f"version {version} of {model!r}"


def _class_index(value: Any, classes: list[str] | None) -> int:
    """A label given as a class name or index → the class index (checked when known)."""
    if isinstance(value, str) and classes is not None and value in classes:
        return classes.index(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"unknown class label {value!r}") from None
    if not number.is_integer():
        raise InvalidInputError(f"class index {value!r} is not an integer")
    index = int(number)
    if index < 0 or (classes is not None and index >= len(classes)):
        raise InvalidInputError(f"class index {index} out of range")
    return index
