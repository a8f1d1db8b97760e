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
The bounds (:class:`ValidationBounds`) and the verdicts (:class:`Verdict`) are defined in
:mod:`aggregation.validation_types`; decoding an array against the spec and stacking the
replies' arrays in blocks in :mod:`aggregation.update_arrays`.

A refused update is never aggregated: its :class:`Verdict` lists every reason, and the round's
:class:`~aggregation.report.RoundReport` counts refusals per reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from aggregation.medians import column_median
from aggregation.messages import records_of
from aggregation.update_arrays import WantedArray, blocks, decode_array
from aggregation.validation_types import RefusalReason, ValidationBounds, Verdict
from edgefleet import flower_keys as fk
from edgefleet.plan import WeightSpec


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
        self._want = {k: WantedArray.of(w) for k, w in self.spec.items()}
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
        :data:`~aggregation.update_arrays.BLOCK_ELEMENTS` values.
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
                    arr = decode_array(verdict, name, arrays[name], want)
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


def _refuse_non_finite(verdict: Verdict, name: str, rows: np.ndarray) -> None:
    if rows.dtype.kind == "f" and not np.isfinite(rows).all():
        bad = int(rows.size - np.count_nonzero(np.isfinite(rows)))
        verdict.refuse(RefusalReason.NOT_FINITE, f"{name}: {bad} non-finite values")


def _norm_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype norms are computed in: floats stay, integers go to float64 (no wrap-around)."""
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _as_count(value: object) -> int | None:
    """An integer count from a metric value, or ``None`` (bools, fractions, NaN, lists)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return int(value)
    return None
