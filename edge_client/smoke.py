"""The smoke test every version passes before it is activated, pre-downloaded or shadowed.

:func:`smoke_test` probes a loaded :class:`~edgefleet.runtime.PlanRuntime` with an all-zeros
input and the manifest's reference means and demands finite probabilities of the right shape;
it also refuses weights that are not finite or exceed :data:`MAX_WEIGHT_MAGNITUDE`.
"""

from __future__ import annotations

import numpy as np

from edge_client.errors import ModelRejectedError
from edgefleet.errors import EdgeFleetError
from edgefleet.runtime import PlanRuntime

__all__ = ["MAX_WEIGHT_MAGNITUDE", "smoke_test"]


def smoke_test(runtime: PlanRuntime) -> None:
    """Ask the plan about an all-zeros input and the reference means; demand probabilities.

    Raises
    ------
    ModelRejectedError
        A weight is not finite or exceeds :data:`MAX_WEIGHT_MAGNITUDE`, the plan raised, or it
        answered something that is not ``[n, n_classes]`` finite probabilities summing to 1.
    """
    m = runtime.manifest
    _check_weight_magnitudes(runtime)
    probes = [np.zeros((1, *m.input.sample_shape), dtype=np.float32)]
    if m.reference is not None and m.reference.features:
        means = np.asarray([f.mean for f in m.reference.features], dtype=np.float32)
        if means.size == int(np.prod(m.input.sample_shape)):
            probes.append(means.reshape(1, *m.input.sample_shape))
    x = np.concatenate(probes)
    try:
        probs = runtime.predict(x)
    except EdgeFleetError as exc:
        raise ModelRejectedError(f"smoke test: the model failed to answer: {exc}") from exc
    want = (x.shape[0], m.output.n_classes)
    if probs.shape != want:
        raise ModelRejectedError(f"smoke test: output shape {probs.shape}, expected {want}")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ModelRejectedError("smoke test: the model answered NaN/inf/negative probabilities")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ModelRejectedError(f"smoke test: probabilities sum to {probs.sum(axis=1)}, not 1")


#: The largest weight magnitude a plan may carry. Trained weights sit many orders below it; past
#: it, float32 activations overflow and what the model answers depends on the interpreter
#: (LiteRT answers NaN, tflite-runtime a finite uniform distribution), so a probe of the outputs
#: alone cannot refuse such a model on every device.
MAX_WEIGHT_MAGNITUDE = 1e6


def _check_weight_magnitudes(runtime: PlanRuntime) -> None:
    """Refuse weights that are not finite or exceed :data:`MAX_WEIGHT_MAGNITUDE`."""
    try:
        weights = runtime.get_weights()
    except EdgeFleetError as exc:
        raise ModelRejectedError(f"smoke test: the weights could not be read: {exc}") from exc
    for name, value in weights.items():
        if not np.all(np.isfinite(value)):
            raise ModelRejectedError(f"smoke test: weight {name!r} is not finite")
        peak = float(np.max(np.abs(value))) if value.size else 0.0
        if peak > MAX_WEIGHT_MAGNITUDE:
            raise ModelRejectedError(
                f"smoke test: weight {name!r} reaches {peak:.3g} (limit {MAX_WEIGHT_MAGNITUDE:g})")
