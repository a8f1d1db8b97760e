"""Convert a :class:`~authoring.models.PlanModule` to a builtins-only TFLite flatbuffer.

The converter runs with ``supported_ops=[TFLITE_BUILTINS]`` and resource variables enabled: the
resulting plan runs in ``ai-edge-litert`` and ``tflite-runtime`` without TensorFlow. When a model
would need TensorFlow (Flex) ops, conversion fails here, at authoring time, with a
:class:`~authoring.errors.FlexOpsRequiredError` naming the ops, never later on a device.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import tensorflow as tf

from authoring.errors import ConversionError, FlexOpsRequiredError
from authoring.models import PlanModule

# The converter (TF 2.21) reports unsupported ops as "'tf.ReluGrad' op is neither a custom op nor
# a flex op", then "TF Select ops: ReluGrad, ..." and "Details: tf.ReluGrad(...)"; older releases
# wrote "Flex ops: FlexReluGrad". Any of them names the op.
_OP_PATTERNS = (
    re.compile(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op"),
    re.compile(r"\bFlex([A-Z][A-Za-z0-9_]*)"),
    re.compile(r"^\s*tf\.([A-Za-z0-9_]+)\s*(?:\{|\()", re.MULTILINE),
)
_SIGNATURE = re.compile(r"failed while converting: '([A-Za-z0-9_]+)'")


def unsupported_ops(message: str) -> list[str]:
    """TensorFlow op names a converter error message says have no builtin kernel."""
    ops: set[str] = set()
    for pattern in _OP_PATTERNS:
        ops.update(pattern.findall(message))
    select = re.search(r"TF Select ops: ([^\n]*)", message)
    if select:
        ops.update(o.strip() for o in select.group(1).split(",") if o.strip())
    return sorted(ops)


def _summary(message: str) -> str:
    """The informative lines of a converter error (it also dumps whole MLIR modules)."""
    keep = [ln.strip() for ln in message.splitlines()
            if "TF Select ops:" in ln or "failed while converting" in ln
            or ln.lstrip().startswith("error:")]
    if not keep:
        keep = [ln.strip() for ln in message.splitlines() if ln.strip()][:3]
    return "\n".join(dict.fromkeys(ln[:300] for ln in keep))


def convert(module: PlanModule) -> bytes:
    """The TFLite flatbuffer of ``module`` with its four plan signatures, builtins only.

    Raises
    ------
    FlexOpsRequiredError
        The model needs TensorFlow ops that TFLite has no builtin kernel for; ``.ops`` names them.
    ConversionError
        Conversion failed for another reason.
    """
    signatures = module.signatures()
    with tempfile.TemporaryDirectory(prefix="edgefleet-convert-") as tmp:
        saved = Path(tmp) / "saved_model"
        tf.saved_model.save(module, str(saved), signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved), signature_keys=list(signatures)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            flatbuffer = converter.convert()
        except Exception as exc:  # the converter raises ConverterError and friends
            message = str(exc)
            ops = unsupported_ops(message)
            if ops or "flex" in message.lower() or "select tf ops" in message.lower():
                sig = _SIGNATURE.search(message)
                raise FlexOpsRequiredError(ops, sig.group(1) if sig else None,
                                           _summary(message)) from exc
            raise ConversionError(f"TFLite conversion failed: {_summary(message)}") from exc
    return bytes(flatbuffer)
