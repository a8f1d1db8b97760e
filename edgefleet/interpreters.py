"""Finding a TFLite interpreter and checking a plan's flatbuffer against its manifest.

Two interpreters can run a plan: ``ai-edge-litert`` (LiteRT, Google's maintained successor,
numpy 1 and 2) and ``tflite-runtime`` (the last release, 2.14, numpy 1 only). Both are imported
lazily, only when a plan is loaded, so importing :mod:`edgefleet` stays light.

:func:`open_plan` is what :class:`edgefleet.runtime.PlanRuntime` uses: it checks, in order,

1. the bytes look like a TFLite flatbuffer (file identifier ``TFL3``; its tables, vectors and
   weight buffers lie inside the bytes, which catches truncation) → else :class:`PlanFormatError`;
2. their sha256 and size are the manifest's → else :class:`PlanMismatchError` (a corrupted plan of
   the right length also ends here: bytes that differ from what the manifest vouches for never
   reach the native interpreter, whose own verifier lets some corruptions through to a crash);
3. the interpreter loads them and they have the four plan signatures → else
   :class:`PlanFormatError`;
4. every signature's inputs and outputs have the names, shapes and dtypes the manifest's input
   spec, output spec, weight spec and train batch size say → else :class:`PlanMismatchError`.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.errors import InterpreterUnavailable, PlanFormatError, PlanMismatchError
from edgefleet.plan import SIGNATURES, PlanManifest

# interpreter name -> (module, accepted aliases)
_INTERPRETERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ai-edge-litert": (
        "ai_edge_litert.interpreter", ("litert", "ai-edge-litert", "ai_edge_litert")
    ),
    "tflite-runtime": (
        "tflite_runtime.interpreter", ("tflite-runtime", "tflite_runtime", "tflite")
    ),
}
AUTO_ORDER = ("ai-edge-litert", "tflite-runtime")
# tflite-runtime's native library clashes with TensorFlow's when TensorFlow is loaded first in
# the same process (plans then fail with "std::bad_alloc"/"vector::reserve"); loaded before
# TensorFlow it works. Set when that order was observed at our first import of tflite_runtime.
_TFLITE_AFTER_TF: list[bool] = []
FILE_IDENTIFIER = b"TFL3"


def canonical_interpreter(choice: str) -> str | None:
    """``"ai-edge-litert"`` or ``"tflite-runtime"`` for an accepted spelling; ``None`` for auto."""
    key = choice.strip().lower()
    if key == "auto":
        return None
    for name, (_, aliases) in _INTERPRETERS.items():
        if key in aliases:
            return name
    raise ValueError(f"unknown interpreter {choice!r}; use 'auto', 'litert' or 'tflite-runtime'")


def interpreter_class(choice: str = "auto") -> tuple[str, Any]:
    """``(name, Interpreter class)`` for ``choice``; ``"auto"`` prefers ai-edge-litert.

    Raises
    ------
    InterpreterUnavailable
        The requested interpreter (or, for ``"auto"``, either one) cannot be imported.
    """
    wanted = canonical_interpreter(choice)
    names = AUTO_ORDER if wanted is None else (wanted,)
    failures: list[str] = []
    for name in names:
        module_name = _INTERPRETERS[name][0]
        if name == "tflite-runtime" and _tflite_runtime_shadowed():
            failures.append(
                "tflite-runtime: imported after TensorFlow in this process, where their native "
                "libraries clash (import tflite_runtime.interpreter before tensorflow)"
            )
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # not installed, or broken (tflite-runtime under numpy 2)
            failures.append(f"{name}: {exc}")
            continue
        return name, module.Interpreter
    missing = [f for f in failures if "clash" not in f]
    hint = ""
    if missing:
        hint = "; install one: pip install " + ("ai-edge-litert" if wanted is None else wanted)
    raise InterpreterUnavailable(
        "no usable TFLite interpreter (" + "; ".join(failures) + ")" + hint
    )


def _tflite_runtime_shadowed() -> bool:
    """Whether tflite-runtime was (or would be) first imported after TensorFlow here."""
    if not _TFLITE_AFTER_TF:
        already = "tflite_runtime.interpreter" in sys.modules
        _TFLITE_AFTER_TF.append(not already and "tensorflow" in sys.modules)
    return _TFLITE_AFTER_TF[0]


def available_interpreters() -> list[str]:
    """The interpreters that import here, in ``auto`` preference order."""
    found = []
    for name in AUTO_ORDER:
        try:
            interpreter_class(name)
        except InterpreterUnavailable:
            continue
        found.append(name)
    return found


@dataclass
class LoadedPlan:
    """An interpreter with a verified plan and the runners of its four signatures."""

    interpreter_name: str
    interpreter: Any
    runners: dict[str, Any]


def _u32(buf: bytes, pos: int) -> int:
    return int.from_bytes(buf[pos : pos + 4], "little")


class _Bounds:
    """Bounds checks of flatbuffer offsets: every table, vector and its elements lie inside."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.n = len(buf)

    def need(self, pos: int, size: int, what: str) -> None:
        if pos < 0 or size < 0 or pos + size > self.n:
            raise PlanFormatError(
                f"plan flatbuffer is truncated or corrupt: {what} at byte {pos} (+{size}) lies "
                f"outside the file's {self.n} bytes"
            )

    def vtable(self, table: int, what: str) -> tuple[int, int]:
        """``(vtable position, vtable size)`` of the table at ``table``; checks its inline size."""
        self.need(table, 4, what)
        vtable = table - int.from_bytes(self.buf[table : table + 4], "little", signed=True)
        self.need(vtable, 4, f"{what} vtable")
        vt_size = int.from_bytes(self.buf[vtable : vtable + 2], "little")
        self.need(vtable, vt_size, f"{what} vtable")
        inline = int.from_bytes(self.buf[vtable + 2 : vtable + 4], "little")
        self.need(table, inline, what)
        return vtable, vt_size

    def table_field(self, table: int, field_id: int, what: str) -> int | None:
        """Absolute position of field ``field_id`` of the table at ``table`` (None if absent)."""
        vtable, vt_size = self.vtable(table, what)
        slot = 4 + 2 * field_id
        if slot + 2 > vt_size:
            return None
        off = int.from_bytes(self.buf[vtable + slot : vtable + slot + 2], "little")
        return table + off if off else None

    def vector(self, field_pos: int | None, elem: int, what: str) -> tuple[int, int]:
        """``(start, length)`` of the vector referenced at ``field_pos`` (``(0, 0)`` if absent)."""
        if field_pos is None:
            return 0, 0
        self.need(field_pos, 4, what)
        vec = field_pos + _u32(self.buf, field_pos)
        self.need(vec, 4, what)
        length = _u32(self.buf, vec)
        self.need(vec + 4, length * elem, what)
        return vec + 4, length

    def tables(self, field_pos: int | None, what: str) -> list[int]:
        start, length = self.vector(field_pos, 4, what)
        out = []
        for i in range(length):
            pos = start + 4 * i
            out.append(pos + _u32(self.buf, pos))
            self.vtable(out[-1], f"{what}[{i}]")
        return out


def check_flatbuffer(plan: bytes) -> None:
    """Refuse bytes that cannot be a TFLite model flatbuffer, without parsing them natively.

    Checks the file identifier ``TFL3`` and that the model's tables and vectors (operator codes,
    subgraphs, buffers and their data, signature defs) lie inside the bytes, so that truncated or
    corrupt files fail here with :class:`PlanFormatError` rather than inside an interpreter.
    """
    if len(plan) < 16:
        raise PlanFormatError(f"plan is not a TFLite flatbuffer: only {len(plan)} bytes")
    if plan[4:8] != FILE_IDENTIFIER:
        raise PlanFormatError(
            f"plan is not a TFLite flatbuffer: file identifier {plan[4:8]!r}, expected "
            f"{FILE_IDENTIFIER!r} (corrupt, truncated at the start, or another format)"
        )
    b = _Bounds(plan)
    root = _u32(plan, 0)
    b.need(root, 4, "model table")
    # tflite schema: Model{version 0, operator_codes 1, subgraphs 2, description 3, buffers 4,
    # metadata_buffer 5, metadata 6, signature_defs 7}; Buffer{data 0, offset 1, size 2}.
    b.tables(b.table_field(root, 1, "model"), "operator_codes")
    b.tables(b.table_field(root, 2, "model"), "subgraphs")
    b.tables(b.table_field(root, 7, "model"), "signature_defs")
    for i, buf in enumerate(b.tables(b.table_field(root, 4, "model"), "buffers")):
        b.vector(b.table_field(buf, 0, f"buffer {i}"), 1, f"buffer {i} data")
        off_pos = b.table_field(buf, 1, f"buffer {i}")
        size_pos = b.table_field(buf, 2, f"buffer {i}")
        if off_pos is not None and size_pos is not None:
            b.need(off_pos, 8, f"buffer {i} offset")
            b.need(size_pos, 8, f"buffer {i} size")
            offset = int.from_bytes(plan[off_pos : off_pos + 8], "little")
            size = int.from_bytes(plan[size_pos : size_pos + 8], "little")
            if offset > 1:  # 0/1 mean "no external data"
                b.need(offset, size, f"buffer {i} external data")


def open_plan(plan: bytes, manifest: PlanManifest, interpreter: str = "auto") -> LoadedPlan:
    """Load ``plan`` in an interpreter and verify it against ``manifest`` (see module doc).

    Bytes reach the native interpreter only after their sha256 matched the manifest's: TFLite's
    own flatbuffer verifier lets some corruptions through that then crash the process.
    """
    check_flatbuffer(plan)
    manifest.check_plan_bytes(plan)
    name, cls = interpreter_class(interpreter)
    try:
        interp = cls(model_content=plan)
        signatures = interp.get_signature_list()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise PlanFormatError(
            f"plan flatbuffer is corrupt ({len(plan)} bytes); {name} refused it: {first}"
        ) from exc
    missing = [s for s in SIGNATURES if s not in signatures]
    if missing:
        raise PlanFormatError(
            f"plan lacks the signature(s) {missing}; it has {sorted(signatures)} "
            "(not an EdgeFleet plan)"
        )
    try:
        runners = {s: interp.get_signature_runner(s) for s in SIGNATURES}
    except (ValueError, RuntimeError) as exc:
        raise PlanFormatError(f"plan signatures cannot be prepared: {exc}") from exc
    check_signatures(runners, manifest)
    return LoadedPlan(name, interp, runners)


class DirectInfer:
    """The ``infer`` signature of ``runner`` called through the interpreter's wrapper: one
    ``SetTensor``, ``Invoke`` and ``GetTensor`` a call, resizing and allocating the signature's
    tensors only when the batch shape changes (the signature runner does both on every call).

    ``__call__`` takes a ``float32`` C-contiguous ``[n, *sample_shape]`` array and returns the
    output as a new array; calls must be serialised by the caller. When the runner lacks the
    wrapper (another interpreter release), it is called as is.
    """

    def __init__(self, runner: Any, input_name: str, output_name: str) -> None:
        self.runner = runner
        self._input_name = input_name
        self._output_name = output_name
        self._wrapper: Any = getattr(runner, "_interpreter_wrapper", None)
        inputs = getattr(runner, "_inputs", None) or {}
        outputs = dict(getattr(runner, "_outputs", None) or ())
        self._subgraph = getattr(runner, "_subgraph_index", None)
        self._in = inputs.get(input_name)
        self._out = outputs.get(output_name)
        self._direct = None not in (self._wrapper, self._subgraph, self._in, self._out) and all(
            hasattr(self._wrapper, m) for m in
            ("ResizeInputTensor", "AllocateTensors", "SetTensor", "Invoke", "GetTensor"))
        self._shape: tuple[int, ...] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self._direct:
            return np.asarray(self.runner(**{self._input_name: x})[self._output_name])
        wrapper, subgraph = self._wrapper, self._subgraph
        if x.shape != self._shape:
            self._shape = None
            wrapper.ResizeInputTensor(self._in, np.array(x.shape, dtype=np.int32), False,
                                      subgraph)
            wrapper.AllocateTensors(subgraph)
            self._shape = x.shape
        wrapper.SetTensor(self._in, x, subgraph)
        wrapper.Invoke(subgraph)
        return wrapper.GetTensor(self._out, subgraph)  # type: ignore[no-any-return]

    def reset(self) -> None:
        """Forget the allocated shape (another caller ran the signature runner itself)."""
        self._shape = None


def _describe(details: dict[str, Any]) -> dict[str, tuple[list[int], str]]:
    out = {}
    for key, d in details.items():
        shape = d.get("shape_signature")
        if shape is None or len(shape) != len(d["shape"]):
            shape = d["shape"]
        out[key] = ([int(v) for v in shape], np.dtype(d["dtype"]).name)
    return out


def expected_signatures(manifest: PlanManifest) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """What each signature's inputs and outputs must be: ``{sig: (inputs, outputs)}``."""
    sample = list(manifest.input.sample_shape)
    b = manifest.train_batch_size
    weights = {w.name: (list(w.shape), w.dtype) for w in manifest.weights}
    return {
        "infer": ({manifest.input.name: ([-1, *sample], manifest.input.dtype)},
                  {manifest.output.name: ([-1, manifest.output.n_classes], "float32")}),
        "train": ({manifest.input.name: ([b, *sample], manifest.input.dtype),
                   "y": ([b], "int32"), "lr": ([], "float32")},
                  {"loss": ([], "float32")}),
        "get_weights": ({}, weights),
        "set_weights": (weights, {"n_assigned": ([], "int32")}),
    }


def check_signatures(runners: dict[str, Any], manifest: PlanManifest,
                     only: tuple[str, ...] = SIGNATURES) -> None:
    """Raise :class:`PlanMismatchError` listing every signature tensor the manifest contradicts
    (of the signatures ``only``; a serving copy of :mod:`edgefleet.frozen` has ``infer`` alone)."""
    problems: list[str] = []
    for sig, (want_in, want_out) in expected_signatures(manifest).items():
        if sig not in only:
            continue
        runner = runners[sig]
        for kind, want, got in (
            ("input", want_in, _describe(runner.get_input_details())),
            ("output", want_out, _describe(runner.get_output_details())),
        ):
            if set(want) != set(got):
                problems.append(f"{sig} {kind}s are {sorted(got)}, manifest implies {sorted(want)}")
                continue
            for key, (shape, dtype) in want.items():
                g_shape, g_dtype = got[key]
                if g_shape != shape or g_dtype != dtype:
                    problems.append(f"{sig} {kind} {key!r} is {g_dtype}{g_shape}, "
                                    f"manifest implies {dtype}{shape}")
    if problems:
        raise PlanMismatchError("plan does not match its manifest: " + "; ".join(problems))
