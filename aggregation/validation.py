"""Validation of client updates before anything reaches a Flower strategy.

A train reply is checked against the plan's weight spec
(:attr:`edgefleet.plan.PlanManifest.weights`) and the current global weights:

1. *structure*: exactly one ``ArrayRecord`` and one ``MetricRecord`` (what Flower's strategies
   require), every array decodable;
2. *names, shapes, dtypes*: exactly the spec's weight names, each with the spec's shape and dtype
   (both the declared and the decoded ones);
3. *finite*: no NaN or infinity anywhere;
4. *update norm*: ``||w_client - w_global||_2`` over all weights together must be finite and
   within an **absolute** bound (``max_update_norm``, off when ``None``) and, once the round's
   replies are in, within a **relative** bound: ``max_norm_ratio`` times the median norm of the
   round's otherwise-valid updates. The relative bound needs at least
   ``min_updates_for_median`` such updates and a positive median; below that it is not applied
   (a median of two is one of the two). Both bounds may be combined;
5. *number of examples*: ``num-examples`` is a positive integer (an integral float is accepted),
   at most ``max_num_examples`` and at most what the node declared in its query reply, with a
   slack (``declared_slack``) because a device keeps collecting labels between the query and
   the end of its training;
6. *direction* (once the round's replies are in): the cosine between an update and the
   coordinate-wise median of the round's otherwise-valid updates must be at least
   ``min(min_cosine, median(cos) - direction_mads * 1.4826 * MAD(cos))`` over the round's
   cosines (``min_cosine`` default 0.1: in a round of aligned updates an update pointing away
   from the round, such as a sign flip of any size, or unrelated to it, such as noise, is
   refused; under label skew honest cosines spread towards 0 and below, and the bound follows
   their spread, ``direction_mads`` default 3, ``None``: ``min_cosine`` alone); computed on at
   most ``direction_sample`` evenly spaced coordinates;
7. *weight*: a ``num-examples`` above ``implausible_ratio`` times the round's median is
   refused as implausible; below that, an accepted update's count is capped at
   ``max_weight_ratio`` times the median (not a refusal), so no count a client declares — in
   its query and its reply alike — buys it more than that share of the aggregate.

:meth:`UpdateValidator.apply_round_bounds` applies the round-level steps 4 (relative), 6 and 7.

A refused update is never aggregated: its :class:`Verdict` lists every reason, and the round's
:class:`RoundReport` counts refusals per reason.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from aggregation.medians import column_median
from aggregation.messages import records_of
from edgefleet import flower_keys as fk
from edgefleet.plan import WeightSpec
from edgefleet.run_settings import DEFAULTS

_DECODE_ERRORS = (ValueError, TypeError, OSError, EOFError)
BLOCK_ELEMENTS = 1 << 22  # values (replies x coordinates) stacked at a time


class RefusalReason(StrEnum):
    """Why an update was refused (one update may have several)."""

    MALFORMED = "malformed"
    NAMES = "names"
    SHAPE = "shape"
    DTYPE = "dtype"
    NOT_FINITE = "not-finite"
    NORM = "norm"
    DIRECTION = "direction"
    NUM_EXAMPLES = fk.NUM_EXAMPLES


@dataclass(frozen=True)
class Refusal:
    """One reason to refuse an update, with a human-readable detail."""

    reason: RefusalReason
    detail: str


@dataclass
class Verdict:
    """The outcome of validating one node's update.

    Attributes
    ----------
    node_id : int
        The node that sent the update.
    refusals : list[Refusal]
        Every reason found; empty when the update is accepted.
    num_examples : int or None
        The validated number of examples (``None`` when missing or implausible).
    update_norm : float or None
        ``||w_client - w_global||_2`` (``None`` when it could not be computed).
    arrays : dict[str, np.ndarray]
        The decoded weights (read-only views of the reply's bytes in the usual case, see
        ``_fast_numpy``) when every array decoded and is finite; empty otherwise.
        :mod:`aggregation.linear` aggregates from them.
    metrics : list[MetricRecord]
        The reply's metric records (one, when it is well formed).
    """

    node_id: int
    refusals: list[Refusal] = field(default_factory=list)
    num_examples: int | None = None
    update_norm: float | None = None
    claimed_examples: int | None = None
    cosine: float | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    metrics: list[MetricRecord] = field(default_factory=list, repr=False)

    @property
    def accepted(self) -> bool:
        return not self.refusals

    @property
    def reasons(self) -> list[RefusalReason]:
        return sorted({r.reason for r in self.refusals})

    def refuse(self, reason: RefusalReason, detail: str) -> None:
        self.refusals.append(Refusal(reason, detail))


@dataclass(frozen=True)
class ValidationBounds:
    """Bounds an update must respect.

    Parameters
    ----------
    max_update_norm : float or None (default: None)
        Absolute bound on ``||w_client - w_global||_2``; ``None`` disables it.
    max_norm_ratio : float or None (default: 10.0)
        Relative bound: an update whose norm exceeds ``max_norm_ratio`` times the median norm of
        the round's otherwise-valid updates is refused; ``None`` disables it.
    min_updates_for_median : int (default: 3)
        The relative bound is applied only with at least this many otherwise-valid updates.
    max_num_examples : int (default: 1_000_000)
        The largest ``num-examples`` any node may report.
    declared_slack : float (default: 0.25)
        A train reply may report up to ``ceil(declared * (1 + declared_slack))`` examples, where
        ``declared`` is the count of the node's query reply.
    min_cosine : float or None (default: 0.1)
        Direction bound: the least cosine between an update and the round's coordinate-wise
        median update; ``None`` disables it.
    max_weight_ratio : float or None (default: 2.0)
        An accepted update weighs at most this many times the round's median ``num-examples``;
        ``None`` disables the cap.
    implausible_ratio : float or None (default: 100.0)
        A ``num-examples`` above this many times the round's median is refused; ``None``
        disables it.
    direction_sample : int (default: 65536)
        Coordinates (evenly spaced over all weights) the direction bound looks at.
    direction_mads : float or None (default: 3.0)
        The direction bound is lowered to the round's median cosine minus this many robust
        deviations (1.4826 x MAD) when that is below ``min_cosine``; ``None``: ``min_cosine``
        alone.
    """

    max_update_norm: float | None = None
    max_norm_ratio: float | None = DEFAULTS.max_norm_ratio
    min_updates_for_median: int = 3
    max_num_examples: int = DEFAULTS.max_num_examples
    declared_slack: float = 0.25
    min_cosine: float | None = DEFAULTS.min_cosine
    max_weight_ratio: float | None = DEFAULTS.max_weight_ratio
    implausible_ratio: float | None = 100.0
    direction_sample: int = 65536
    direction_mads: float | None = DEFAULTS.direction_mads

    def __post_init__(self) -> None:
        from aggregation.errors import SettingsError

        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise SettingsError(f"max_update_norm must be > 0, got {self.max_update_norm}")
        if self.max_norm_ratio is not None and not self.max_norm_ratio >= 1:
            raise SettingsError(f"max_norm_ratio must be >= 1, got {self.max_norm_ratio}")
        if self.min_updates_for_median < 2:
            raise SettingsError("min_updates_for_median must be >= 2")
        if self.max_num_examples < 1:
            raise SettingsError("max_num_examples must be >= 1")
        if not self.declared_slack >= 0:
            raise SettingsError("declared_slack must be >= 0")
        if self.min_cosine is not None and not -1 <= self.min_cosine < 1:
            raise SettingsError(f"min_cosine must be in [-1, 1), got {self.min_cosine}")
        for name in ("max_weight_ratio", "implausible_ratio"):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise SettingsError(f"{name} must be >= 1, got {value}")
        if self.direction_sample < 1:
            raise SettingsError("direction_sample must be >= 1")
        if self.direction_mads is not None and not self.direction_mads >= 0:
            raise SettingsError(f"direction_mads must be >= 0, got {self.direction_mads}")


class UpdateValidator:
    """Validate train replies against a weight spec and the current global weights.

    Parameters
    ----------
    spec : Sequence[WeightSpec]
        The plan's weight spec (names, shapes, dtypes).
    global_weights : Mapping[str, np.ndarray]
        The weights the round's train messages carried.
    bounds : ValidationBounds (default: ValidationBounds())
        Norm and num-examples bounds.
    """

    def __init__(
        self,
        spec: Sequence[WeightSpec],
        global_weights: Mapping[str, np.ndarray],
        bounds: ValidationBounds | None = None,
    ) -> None:
        self.spec = {w.name: w for w in spec}
        self.bounds = bounds or ValidationBounds()
        self._global = {
            k: np.asarray(global_weights[k], dtype=_norm_dtype(np.dtype(w.dtype)))
            for k, w in self.spec.items()
        }
        self._want = {k: _Want.of(w) for k, w in self.spec.items()}
        total = sum(math.prod(w.shape) for w in self.spec.values())
        self._stride = max(1, math.ceil(total / self.bounds.direction_sample))
        self._samples: dict[int, np.ndarray] = {}
        self._sample_matrix: tuple[np.ndarray, dict[int, int]] = (np.zeros((0, 0)), {})

    # --- the updates -----------------------------------------------------------------------
    def validate(
        self, node_id: int, content: RecordDict, *, declared_examples: int | None = None
    ) -> Verdict:
        """Check one reply's content; ``declared_examples`` is the node's query-reply count."""
        return self.validate_all([(node_id, content, declared_examples)])[0]

    def validate_all(
        self, replies: Sequence[tuple[int, RecordDict, int | None]]
    ) -> list[Verdict]:
        """Check ``(node_id, content, declared_examples)`` replies (module notes, steps 1-5).

        The per-reply checks (structure, names, shapes, dtypes, num-examples) look at each
        reply's records; the numeric ones (finite, norm, the direction sample) run once over the
        replies' arrays stacked per weight (:meth:`_numeric`), in column blocks of at most
        :data:`BLOCK_ELEMENTS` values.
        """
        verdicts, decoded = [], []
        for node_id, content, declared in replies:
            verdict = Verdict(node_id)
            verdict.metrics = records_of(content, MetricRecord)
            array_records = records_of(content, ArrayRecord)
            self._check_num_examples(verdict, verdict.metrics, declared)
            arrays = self._check_structure(verdict, array_records, verdict.metrics)
            got: dict[str, np.ndarray] = {}
            if arrays is not None:
                for name, want in self._want.items():
                    arr = _decode(verdict, name, arrays[name], want)
                    if arr is not None:
                        got[name] = arr
            verdicts.append(verdict)
            decoded.append(got)
        complete = [i for i, d in enumerate(decoded) if len(d) == len(self.spec)]
        for i, d in enumerate(decoded):
            if d and len(d) < len(self.spec):  # partly undecodable: report non-finite values too
                for name, arr in d.items():
                    _refuse_non_finite(verdicts[i], name, arr.reshape(1, -1))
        if complete:
            self._numeric([verdicts[i] for i in complete], [decoded[i] for i in complete])
        return verdicts

    def _numeric(self, verdicts: list[Verdict], decoded: list[dict[str, np.ndarray]]) -> None:
        """Finite values, update norms and direction samples of fully decoded replies."""
        n = len(verdicts)
        sq = np.zeros(n, dtype=np.float64)
        finite = np.ones(n, dtype=bool)
        samples: list[np.ndarray] = []
        offset = 0
        for name in self.spec:
            g = self._global[name].reshape(-1)
            flats = [d[name].reshape(-1) for d in decoded]
            size = g.size
            start, offset = (-offset) % self._stride, offset + size
            bad = np.zeros(n, dtype=np.int64)
            for lo, hi, block in blocks(flats):
                with np.errstate(over="ignore", invalid="ignore"):
                    # the stacked block is ours: subtract in place when the dtypes allow
                    diff = np.subtract(block, g[lo:hi], dtype=g.dtype,
                                       out=block if block.dtype == g.dtype else None)
                    part = np.einsum("ij,ij->i", diff, diff)
                sq += part
                if block.dtype.kind == "f":  # a non-finite value makes its row's sum non-finite
                    for row in np.flatnonzero(~np.isfinite(part)).tolist():
                        bad[row] += hi - lo - np.count_nonzero(np.isfinite(diff[row]))
                first = start if lo <= start else start + -(-(lo - start) // self._stride) * (
                    self._stride)
                if first < hi:  # a copy: the block's buffer is reused
                    samples.append(diff[:, first - lo::self._stride].copy())
            for row in np.flatnonzero(bad).tolist():
                verdicts[row].refuse(RefusalReason.NOT_FINITE,
                                     f"{name}: {int(bad[row])} non-finite values")
                finite[row] = False
        sample = np.concatenate(samples, axis=1) if samples else np.zeros((n, 0))
        self._sample_matrix = (sample, {v.node_id: i for i, v in enumerate(verdicts)})
        limit = self.bounds.max_update_norm
        for i, verdict in enumerate(verdicts):
            if finite[i]:
                verdict.arrays = decoded[i]
            if not verdict.accepted:
                continue
            self._samples[verdict.node_id] = sample[i]
            norm = math.sqrt(sq[i]) if math.isfinite(sq[i]) else math.inf
            verdict.update_norm = norm
            if not math.isfinite(norm):
                verdict.refuse(RefusalReason.NORM, "update norm overflows")
            elif limit is not None and norm > limit:
                verdict.refuse(RefusalReason.NORM, f"update norm {norm:.4g} > {limit:.4g}")

    def _check_structure(
        self, verdict: Verdict, array_records: list[ArrayRecord],
        metric_records: list[MetricRecord],
    ) -> dict[str, Array] | None:
        if len(array_records) != 1 or len(metric_records) != 1:
            verdict.refuse(
                RefusalReason.MALFORMED,
                f"expected 1 ArrayRecord and 1 MetricRecord, got {len(array_records)} and "
                f"{len(metric_records)}",
            )
            return None
        arrays = dict(array_records[0].items())
        missing = sorted(set(self.spec) - set(arrays))
        extra = sorted(set(arrays) - set(self.spec))
        if missing or extra:
            verdict.refuse(RefusalReason.NAMES, f"missing {missing}, unexpected {extra}")
            return None
        return arrays

    def _check_num_examples(
        self, verdict: Verdict, metric_records: list[MetricRecord], declared: int | None
    ) -> None:
        raw = metric_records[0].get(fk.NUM_EXAMPLES) if metric_records else None
        n = _as_count(raw)
        cap = self.bounds.max_num_examples
        if declared is not None and declared > 0:
            cap = min(cap, math.ceil(declared * (1.0 + self.bounds.declared_slack)))
        if n is None or n <= 0:
            verdict.refuse(RefusalReason.NUM_EXAMPLES, f"{fk.NUM_EXAMPLES}={raw!r}")
        elif n > cap:
            verdict.refuse(RefusalReason.NUM_EXAMPLES, f"{fk.NUM_EXAMPLES}={n} > {cap}")
        else:
            verdict.num_examples = n

    # --- the whole round -------------------------------------------------------------------
    def apply_round_bounds(self, verdicts: Sequence[Verdict]) -> float | None:
        """The round-level steps: relative norm, direction, weight cap (module notes 4, 6, 7).

        Returns the round's median update norm (``None`` when the relative bound was not
        applied).
        """
        median = self.apply_relative_bound(verdicts)
        self.apply_direction_bound(verdicts)
        self.apply_weight_cap(verdicts)
        return median

    def apply_direction_bound(self, verdicts: Sequence[Verdict]) -> None:
        """Refuse accepted updates pointing away from the round's coordinate-wise median."""
        least = self.bounds.min_cosine
        live = [v for v in verdicts if v.accepted and v.node_id in self._samples]
        if least is None or len(live) < self.bounds.min_updates_for_median:
            return
        stack = self._sample_rows([v.node_id for v in live])
        reference = column_median(stack)
        ref_norm = float(np.linalg.norm(reference.astype(np.float64)))
        if ref_norm <= 0 or not math.isfinite(ref_norm):
            return
        dots = stack.astype(np.float64, copy=False) @ reference.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", stack, stack, dtype=np.float64))
        cosines = np.divide(dots, norms * ref_norm, out=np.zeros_like(dots), where=norms > 0)
        bound = least
        if self.bounds.direction_mads is not None:
            med = float(np.median(cosines))
            spread = 1.4826 * float(np.median(np.abs(cosines - med)))
            bound = min(least, med - self.bounds.direction_mads * spread)
        for v, cosine in zip(live, cosines.tolist(), strict=True):
            v.cosine = cosine
            if v.cosine < bound:
                v.refuse(RefusalReason.DIRECTION,
                         f"cosine {v.cosine:.3f} with the round's median update < {bound:.3g}")

    def _sample_rows(self, nodes: list[int]) -> np.ndarray:
        """The direction samples of ``nodes`` as one matrix (no copy when they are the rows of
        the last :meth:`validate_all`, in order)."""
        matrix, index = self._sample_matrix
        rows = [index.get(n, -1) for n in nodes]
        if rows == list(range(len(matrix))):
            return matrix
        if min(rows, default=0) >= 0:
            return matrix[rows]
        return np.stack([self._samples[n] for n in nodes])

    def apply_weight_cap(self, verdicts: Sequence[Verdict]) -> int | None:
        """Cap accepted updates' ``num-examples`` at ``max_weight_ratio`` x the round median;
        return the cap (``None`` when not applied)."""
        ratio, implausible = self.bounds.max_weight_ratio, self.bounds.implausible_ratio
        counts = [v.num_examples for v in verdicts if v.accepted and v.num_examples]
        if len(counts) < self.bounds.min_updates_for_median:
            return None
        median = float(np.median(counts))
        if implausible is not None:
            for v in verdicts:
                if v.accepted and v.num_examples is not None and v.num_examples > (
                        implausible * median):
                    v.refuse(RefusalReason.NUM_EXAMPLES,
                             f"{fk.NUM_EXAMPLES}={v.num_examples} > {implausible:g} x round "
                             f"median {median:g}")
        if ratio is None:
            return None
        cap = max(1, math.ceil(ratio * median))
        for v in verdicts:
            if v.accepted and v.num_examples is not None and v.num_examples > cap:
                v.claimed_examples, v.num_examples = v.num_examples, cap
        return cap

    def apply_relative_bound(self, verdicts: Sequence[Verdict]) -> float | None:
        """Refuse accepted updates whose norm exceeds ``max_norm_ratio`` x the round's median.

        Returns the median used, or ``None`` when the relative bound was not applied.
        """
        ratio = self.bounds.max_norm_ratio
        norms = [v.update_norm for v in verdicts if v.accepted and v.update_norm is not None]
        if ratio is None or len(norms) < self.bounds.min_updates_for_median:
            return None
        median = float(np.median(norms))
        if median <= 0:
            return None
        for v in verdicts:
            if v.accepted and v.update_norm is not None and v.update_norm > ratio * median:
                v.refuse(
                    RefusalReason.NORM,
                    f"update norm {v.update_norm:.4g} > {ratio:g} x round median {median:.4g}",
                )
        return median


def blocks(flats: Sequence[np.ndarray]) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(lo, hi, block)`` over the coordinates of equally long 1-D arrays: ``block`` is a
    C-ordered ``(len(flats), hi - lo)`` stack of ``flat[lo:hi]``, of at most
    :data:`BLOCK_ELEMENTS` values, in one buffer reused from block to block (so a caller may
    overwrite it, and must copy what it keeps)."""
    n, size = len(flats), flats[0].size
    width = max(1, min(size, BLOCK_ELEMENTS // n))
    buffer = np.empty(n * width, dtype=flats[0].dtype)
    for lo in range(0, size, width):
        hi = min(size, lo + width)
        block = buffer[: n * (hi - lo)].reshape(n, hi - lo)
        np.stack([f[lo:hi] for f in flats], out=block)
        yield lo, hi, block


def _refuse_non_finite(verdict: Verdict, name: str, rows: np.ndarray) -> None:
    if rows.dtype.kind == "f" and not np.isfinite(rows).all():
        bad = int(rows.size - np.count_nonzero(np.isfinite(rows)))
        verdict.refuse(RefusalReason.NOT_FINITE, f"{name}: {bad} non-finite values")


def _norm_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype norms are computed in: floats stay, integers go to float64 (no wrap-around)."""
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


@dataclass(frozen=True)
class _Want:
    """One weight of the spec, as the decoder compares it: shape, dtype, the ``.npy`` bytes."""

    shape: tuple[int, ...]
    dtype: np.dtype
    dtype_name: str
    header: bytes
    nbytes: int

    @classmethod
    def of(cls, spec: WeightSpec) -> _Want:
        shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
        header = _npy_header(shape, dtype.str)
        size = len(header) + math.prod(shape) * dtype.itemsize
        return cls(shape, dtype, dtype.name, header, size)


def _decode(verdict: Verdict, name: str, array: Array, want: _Want) -> np.ndarray | None:
    """Check the declared then the decoded shape/dtype of one array; ``None`` if refused."""
    if tuple(array.shape) != want.shape:
        verdict.refuse(RefusalReason.SHAPE,
                       f"{name}: shape {list(array.shape)}, want {list(want.shape)}")
        return None
    if array.dtype != want.dtype_name:
        verdict.refuse(RefusalReason.DTYPE, f"{name}: dtype {array.dtype}, want {want.dtype_name}")
        return None
    try:
        arr = _fast_numpy(array, want)
        if arr is None:
            arr = array.numpy()
    except _DECODE_ERRORS as exc:
        verdict.refuse(RefusalReason.MALFORMED, f"{name}: undecodable array ({exc})")
        return None
    if arr.shape != want.shape:
        verdict.refuse(RefusalReason.SHAPE, f"{name}: decoded shape {list(arr.shape)}")
        return None
    if arr.dtype != want.dtype:
        verdict.refuse(RefusalReason.DTYPE, f"{name}: decoded dtype {arr.dtype}")
        return None
    return arr


@functools.lru_cache(maxsize=256)
def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The exact ``.npy`` header ``np.save`` writes for a C-ordered array of this spec."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape})
    return buf.getvalue()


def _fast_numpy(array: Array, want: _Want) -> np.ndarray | None:
    """A read-only view of the array's bytes when they are exactly ``np.save``'s output for the
    spec (what Flower's ``Array(ndarray)`` writes); else ``None`` (decode the slow way).

    ``Array.numpy()`` parses the ``.npy`` header with ``ast.literal_eval``, most of the cost of
    a small array; comparing the header bytes with the one expected is exact and cheaper.
    """
    data = array.data
    if array.stype != "numpy.ndarray" or not isinstance(data, bytes):
        return None
    if len(data) != want.nbytes or not data.startswith(want.header):
        return None
    return np.frombuffer(data, dtype=want.dtype, offset=len(want.header)).reshape(want.shape)


def _as_count(value: object) -> int | None:
    """An integer count from a metric value, or ``None`` (bools, fractions, NaN, lists)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return int(value)
    return None
