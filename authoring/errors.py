"""Exceptions of the authoring package.

::

    AuthoringError                  a model definition cannot become a plan
    ├── ModelDefinitionError        invalid architecture arguments (no layers, bad sizes, ...)
    └── ConversionError             the TFLite converter refused the model
        └── FlexOpsRequiredError    the model needs TF (Flex) ops that device interpreters lack

These never reach a device: authoring runs once, on a machine with TensorFlow.
"""

from __future__ import annotations

from edgefleet.errors import EdgeFleetError


class AuthoringError(EdgeFleetError):
    """Root of every error raised while authoring or converting a model."""


class ModelDefinitionError(AuthoringError, ValueError):
    """The model's architecture arguments are invalid."""


class ConversionError(AuthoringError):
    """TFLite conversion failed for a reason other than Flex ops."""


class FlexOpsRequiredError(ConversionError):
    """The model needs TensorFlow ops that have no TFLite builtin kernel.

    Parameters
    ----------
    ops
        The TensorFlow op names the converter could not lower (e.g. ``["ReluGrad"]``).
    signature
        The plan signature that needs them (e.g. ``"train"``), when the converter says.
    detail
        The informative lines of the converter's message.
    """

    def __init__(self, ops: list[str], signature: str | None = None, detail: str = "") -> None:
        self.ops = sorted(set(ops))
        self.signature = signature
        names = ", ".join(self.ops) if self.ops else "<unknown>"
        where = f" in signature {signature!r}" if signature else ""
        msg = (
            f"model needs TensorFlow (Flex) ops with no TFLite builtin kernel{where}: {names}. "
            "Device interpreters (ai-edge-litert, tflite-runtime) cannot run them; rewrite the "
            "model with builtin ops (e.g. ReLU via tf.custom_gradient, a hand-written "
            "log-softmax loss, a static train batch)."
        )
        if detail:
            msg += f"\nconverter said: {detail}"
        super().__init__(msg)
