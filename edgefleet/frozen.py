"""Serving copies of a plan: the ``infer`` signature alone, with the weights as constants.

A plan (see :mod:`edgefleet.plan`) keeps its weights in TFLite resource variables so that it can
train on the device. Its ``infer`` subgraph therefore starts with ``VAR_HANDLE`` and
``READ_VARIABLE`` operators that copy every weight on every call, and its matrix products have
non-constant right-hand sides, which the interpreter's XNNPACK delegate cannot pack once ahead
of time. For a model of tens of megabytes that is a fixed cost of tens of milliseconds per call.

:func:`freeze_plan` rewrites the plan's flatbuffer without TensorFlow (the object API of the
TFLite schema that ``ai-edge-litert`` ships, ``ai_edge_litert.schema_py_generated``, over the
``flatbuffers`` package it depends on) into a model with one subgraph and one signature,
``infer``, whose inputs and outputs are the plan's:

1. every ``READ_VARIABLE`` output becomes a constant tensor holding the weight it reads. The
   weight is found by name through the plan's ``get_weights`` signature (signature output →
   ``READ_VARIABLE`` → ``VAR_HANDLE`` shared name), and it must have the shape and dtype of the
   tensor it replaces;
2. the ``CALL_ONCE``, ``VAR_HANDLE`` and ``READ_VARIABLE`` operators and the resource tensors are
   dropped;
3. with ``fuse_dense`` (the default), each ``BATCH_MATMUL(x, W)`` of a rank-2 ``x`` and a constant
   ``W [K, N]``, followed by an ``ADD`` of a constant bias ``[N]`` as the product's only use,
   becomes one ``FULLY_CONNECTED(x, Wᵀ, bias)`` carrying the ``ADD``'s fused activation: the
   operator whose constant weights XNNPACK packs at load time.

:class:`FrozenRuntime` runs such a copy with :class:`~edgefleet.runtime.PlanRuntime`'s
``predict`` (same input checks, same chunking); it cannot train or move weights.

Inputs are checked before anything is built: the plan bytes against the manifest (flatbuffer
bounds, sha256 and size, as :func:`~edgefleet.interpreters.open_plan` does) and the weights
against the manifest's weight spec (names, shapes, dtypes, finite values). The output's bytes are
produced here from verified inputs only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgefleet.errors import PlanFormatError, WeightsError
from edgefleet.interpreters import LoadedPlan, check_flatbuffer, check_signatures, interpreter_class
from edgefleet.plan import PlanManifest, check_weights
from edgefleet.runtime import PlanRuntime

__all__ = ["FrozenRuntime", "freeze_plan", "schema_available"]

_SCHEMA_MODULE = "ai_edge_litert.schema_py_generated"
_DROPPED = ("CALL_ONCE", "VAR_HANDLE", "READ_VARIABLE")
#: Byte alignment of every constant buffer (what the TFLite converter uses).
_ALIGN = 16
#: TensorType values of the schema the weight dtypes map to.
_TENSOR_TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int64": 4}


def _schema() -> Any:
    import importlib

    try:
        return importlib.import_module(_SCHEMA_MODULE)
    except ImportError as exc:
        raise PlanFormatError(f"serving copies need {_SCHEMA_MODULE} (ai-edge-litert): {exc}"
                              ) from exc


def schema_available() -> bool:
    """Whether :func:`freeze_plan` can run here (``ai-edge-litert`` is installed)."""
    try:
        _schema()
    except PlanFormatError:
        return False
    return True


class _AlignedBuffer:
    """A ``Buffer`` table whose data vector is aligned to :data:`_ALIGN` bytes."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data

    def Pack(self, builder: Any) -> int:  # the name the schema's object API calls
        s = _schema()
        vector = None
        if self.data:
            builder.StartVector(1, len(self.data), _ALIGN)
            builder.head -= len(self.data)
            builder.Bytes[builder.head : builder.head + len(self.data)] = self.data
            vector = builder.EndVector()
        s.BufferStart(builder)
        if vector is not None:
            s.BufferAddData(builder, vector)
        return int(s.BufferEnd(builder))


class _Rewrite:
    """The state of one :func:`freeze_plan`: the source model and the copy being built."""

    def __init__(self, model: Any, weights: Mapping[str, np.ndarray]) -> None:
        self.s = _schema()
        self.model = model
        self.weights = weights
        self.names = {v: k for k, v in vars(self.s.BuiltinOperator).items()
                      if not k.startswith("_")}
        self.buffers: list[_AlignedBuffer] = [_AlignedBuffer(None)]  # buffer 0: empty
        self.codes: list[Any] = []
        self.code_index: dict[int, int] = {}
        self.new_ops: dict[int, int] = {}  # id of an operator made here -> its builtin code

    def op_name(self, op: Any) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        return self.names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")

    def signature(self, key: str) -> Any:
        for sig in self.model.signatureDefs or []:
            if sig.signatureKey.decode() == key:
                return sig
        raise PlanFormatError(f"plan has no {key!r} signature")

    def shared_names(self, subgraph: Any) -> dict[int, str]:
        """``{READ_VARIABLE output tensor: variable shared name}`` of one subgraph."""
        handles = {op.outputs[0]: op.builtinOptions.sharedName.decode()
                   for op in subgraph.operators if self.op_name(op) == "VAR_HANDLE"}
        out = {}
        for op in subgraph.operators:
            if self.op_name(op) == "READ_VARIABLE":
                if op.inputs[0] not in handles:
                    raise PlanFormatError("a READ_VARIABLE reads no VAR_HANDLE")
                out[int(op.outputs[0])] = handles[op.inputs[0]]
        return out

    def weight_by_variable(self) -> dict[str, str]:
        """``{variable shared name: weight name}``, from the ``get_weights`` signature."""
        sig = self.signature("get_weights")
        reads = self.shared_names(self.model.subgraphs[sig.subgraphIndex])
        out = {}
        for item in sig.outputs:
            if item.tensorIndex not in reads:
                raise PlanFormatError(f"get_weights output {item.name!r} is not a variable read")
            out[reads[item.tensorIndex]] = item.name.decode()
        return out

    def opcode(self, builtin: int) -> int:
        if builtin not in self.code_index:
            code = self.s.OperatorCodeT()
            code.builtinCode = builtin
            code.deprecatedBuiltinCode = min(builtin, 127)
            code.version = 1
            self.code_index[builtin] = len(self.codes)
            self.codes.append(code)
        return self.code_index[builtin]

    def constant(self, data: bytes) -> int:
        self.buffers.append(_AlignedBuffer(data))
        return len(self.buffers) - 1


def freeze_plan(plan: bytes, manifest: PlanManifest, weights: Mapping[str, np.ndarray], *,
                fuse_dense: bool = True) -> bytes:
    """The serving copy of ``plan`` with ``weights`` as constants (see the module notes).

    Raises
    ------
    PlanFormatError, PlanMismatchError
        The plan bytes are not a TFLite flatbuffer, not the manifest's, or not an EdgeFleet plan.
    WeightsError
        The weights differ from the manifest's weight spec or from the tensors they replace, or
        hold NaN/inf values.
    """
    check_flatbuffer(plan)
    manifest.check_plan_bytes(plan)
    check_weights(manifest.weights, weights)
    bad = sorted(k for k, v in weights.items() if not np.all(np.isfinite(v)))
    if bad:
        raise WeightsError(f"weights contain NaN/inf values: {bad}")
    s = _schema()
    try:
        model = s.ModelT.InitFromPackedBuf(bytearray(plan), 0)
    except Exception as exc:  # the generated reader raises whatever a bad offset causes
        raise PlanFormatError(f"plan flatbuffer cannot be read: {exc}") from exc
    rw = _Rewrite(model, weights)
    sig = rw.signature("infer")
    subgraph = _frozen_subgraph(rw, model.subgraphs[sig.subgraphIndex], fuse_dense)
    out = s.ModelT()
    out.version = model.version
    out.description = b"EdgeFleet serving copy (infer only, weights as constants)"
    out.operatorCodes = rw.codes
    out.subgraphs = [subgraph.table]
    out.buffers = rw.buffers
    infer = s.SignatureDefT()
    infer.signatureKey = b"infer"
    infer.subgraphIndex = 0
    infer.inputs = [_tensor_map(s, t.name, subgraph.index[t.tensorIndex]) for t in sig.inputs]
    infer.outputs = [_tensor_map(s, t.name, subgraph.index[t.tensorIndex]) for t in sig.outputs]
    out.signatureDefs = [infer]
    builder = _builder(s, sum(len(b.data or b"") for b in rw.buffers))
    builder.Finish(out.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _builder(s: Any, payload: int) -> Any:
    import flatbuffers

    return flatbuffers.Builder(min(payload + (1 << 20), flatbuffers.Builder.MAX_BUFFER_SIZE))


def _tensor_map(s: Any, name: bytes, index: int) -> Any:
    t = s.TensorMapT()
    t.name = name
    t.tensorIndex = index
    return t


class _Subgraph:
    """The rewritten subgraph (``table``) and ``index``: old tensor index → new one."""

    def __init__(self, table: Any, index: dict[int, int]) -> None:
        self.table = table
        self.index = index


def _frozen_subgraph(rw: _Rewrite, source: Any, fuse_dense: bool) -> _Subgraph:
    """The ``infer`` subgraph with variable reads replaced by constants (steps 1–3)."""
    by_variable = rw.weight_by_variable()
    constants: dict[int, np.ndarray] = {}
    for tensor, variable in rw.shared_names(source).items():
        if variable not in by_variable:
            raise PlanFormatError(f"infer reads variable {variable!r}, which get_weights lacks")
        name = by_variable[variable]
        value = np.ascontiguousarray(rw.weights[name])
        want = source.tensors[tensor]
        if (list(want.shape) != list(value.shape)
                or _TENSOR_TYPES.get(value.dtype.name) != want.type):
            raise WeightsError(f"weight {name!r} is {value.dtype}{list(value.shape)}; the plan "
                               f"reads it as type {want.type} {list(want.shape)}")
        constants[tensor] = value
    ops = [op for op in source.operators if rw.op_name(op) not in _DROPPED]
    if fuse_dense:
        ops = _fuse_dense(rw, source, ops, constants)
    return _compact(rw, source, ops, constants)


def _fuse_dense(rw: _Rewrite, source: Any, ops: list[Any], constants: dict[int, np.ndarray]
                ) -> list[Any]:
    """Step 3: ``BATCH_MATMUL`` + bias ``ADD`` → ``FULLY_CONNECTED`` where the pattern holds."""
    uses: dict[int, int] = {}
    for t in [*(t for op in ops for t in op.inputs), *source.outputs]:
        uses[int(t)] = uses.get(int(t), 0) + 1
    out: list[Any] = []
    position: dict[int, int] = {}  # BATCH_MATMUL output tensor -> its place in ``out``
    for op in ops:
        name = rw.op_name(op)
        if name == "BATCH_MATMUL" and len(op.outputs) == 1:
            position[int(op.outputs[0])] = len(out)
        elif name == "ADD" and len(op.inputs) == 2 and int(op.inputs[0]) in position:
            product, bias = int(op.inputs[0]), int(op.inputs[1])
            mm = out[position[product]]
            if uses.get(product) == 1 and _dense_pattern(source, mm, bias, constants):
                out[position.pop(product)] = _dense_op(rw, source, mm, op, constants)
                continue
        out.append(op)
    return out


def _dense_op(rw: _Rewrite, source: Any, mm: Any, add: Any, constants: dict[int, np.ndarray]
              ) -> Any:
    """The ``FULLY_CONNECTED`` doing ``mm`` then ``add`` (its kernel transposed to ``[N, K]``)."""
    s = rw.s
    kernel = int(mm.inputs[1])
    constants[kernel] = np.ascontiguousarray(constants[kernel].T)
    source.tensors[kernel].shape = list(constants[kernel].shape)
    fc = s.OperatorT()
    fc.inputs = [int(mm.inputs[0]), kernel, int(add.inputs[1])]
    fc.outputs = list(add.outputs)
    fc.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    fc.builtinOptions = s.FullyConnectedOptionsT()
    fc.builtinOptions.fusedActivationFunction = getattr(add.builtinOptions,
                                                        "fusedActivationFunction", 0)
    rw.new_ops[id(fc)] = s.BuiltinOperator.FULLY_CONNECTED
    return fc


def _dense_pattern(source: Any, mm: Any, bias: int, constants: dict[int, np.ndarray]) -> bool:
    """Whether ``mm`` is ``x [B, K] @ W [K, N]`` with constant ``W`` and ``bias`` ``[N]``."""
    if len(mm.inputs) != 2 or int(mm.inputs[1]) not in constants or bias not in constants:
        return False
    opts = mm.builtinOptions
    if opts is not None and (opts.adjX or opts.adjY):
        return False
    x = source.tensors[int(mm.inputs[0])]
    shape = x.shapeSignature if x.shapeSignature is not None else x.shape
    kernel, b = constants[int(mm.inputs[1])], constants[bias]
    return (len(shape) == 2 and kernel.ndim == 2 and kernel.dtype == np.float32
            and b.shape == (kernel.shape[1],) and b.dtype == np.float32
            and int(shape[1]) == kernel.shape[0])


def _compact(rw: _Rewrite, source: Any, ops: list[Any], constants: dict[int, np.ndarray]
             ) -> _Subgraph:
    """Keep the tensors the kept operators use, renumbered; give constants their buffers."""
    used: list[int] = []
    seen: set[int] = set()
    for t in [*source.inputs, *(t for op in ops for t in (*op.inputs, *op.outputs)),
              *source.outputs]:
        if int(t) >= 0 and int(t) not in seen:
            seen.add(int(t))
            used.append(int(t))
    index = {old: new for new, old in enumerate(used)}
    tensors = []
    for old in used:
        tensor = source.tensors[old]
        if old in constants:
            tensor.buffer = rw.constant(constants[old].tobytes())
            tensor.shapeSignature = None
        elif tensor.buffer:  # a constant of the plan (or an empty buffer: not a constant)
            data = rw.model.buffers[tensor.buffer].data
            tensor.buffer = rw.constant(bytes(data)) if data is not None and len(data) else 0
        tensors.append(tensor)
    for op in ops:
        builtin = rw.new_ops.get(id(op))
        if builtin is None:
            code = rw.model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        op.opcodeIndex = rw.opcode(builtin)
        op.inputs = [index[int(t)] if int(t) >= 0 else -1 for t in op.inputs]
        op.outputs = [index[int(t)] for t in op.outputs]
    table = rw.s.SubGraphT()
    table.name = b"infer"
    table.tensors = tensors
    table.inputs = [index[int(t)] for t in source.inputs]
    table.outputs = [index[int(t)] for t in source.outputs]
    table.operators = ops
    return _Subgraph(table, index)


class FrozenRuntime(PlanRuntime):
    """:meth:`PlanRuntime.predict` over a serving copy (:func:`freeze_plan`); inference only."""

    def __init__(self, frozen: bytes, manifest: PlanManifest, *, interpreter: str = "auto"
                 ) -> None:
        name, cls = interpreter_class(interpreter)
        try:
            interp = cls(model_content=frozen)
            runners = {"infer": interp.get_signature_runner("infer")}
        except (ValueError, RuntimeError) as exc:
            raise PlanFormatError(f"serving copy cannot be loaded by {name}: {exc}") from exc
        check_signatures(runners, manifest, only=("infer",))
        self._attach(LoadedPlan(name, interp, runners), manifest)

    @classmethod
    def freeze(cls, plan: bytes, manifest: PlanManifest, weights: Mapping[str, np.ndarray], *,
               interpreter: str = "auto") -> FrozenRuntime:
        """:func:`freeze_plan` then load the copy."""
        return cls(freeze_plan(plan, manifest, weights), manifest, interpreter=interpreter)

    def _step(self, x: np.ndarray, y: np.ndarray, lr: np.ndarray) -> float:
        raise PlanFormatError("a serving copy cannot train")

    def get_weights(self) -> dict[str, np.ndarray]:
        raise PlanFormatError("a serving copy holds its weights as constants")

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        raise PlanFormatError("a serving copy holds its weights as constants: freeze again")
