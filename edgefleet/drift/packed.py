"""The drift summary as one fixed-layout binary vector, for Flower messages.

:class:`~edgefleet.drift.summary.DriftSummary` (JSON, pydantic) is the summary's wire form for
REST telemetry; validating one costs about a millisecond. A Flower reply carries the same
numbers as one ``bytes`` value (:data:`edgefleet.flower_keys.DRIFT_PACKED`) that the server
decodes with ``np.frombuffer`` and validates for all the replies of a round at once
(:func:`unpack_many`). Little-endian, 8-byte words::

    int64[10]  header: MAGIC, schema version, version, n, features F, classes C,
               confidence bins K, bin counts T, model name bytes M, 0
    bytes[32]  reference fingerprint (the 64 hex digits as 32 bytes)
    bytes[M']  model name, UTF-8, zero-padded to a multiple of 8
    int64[..]  lengths[F], bins[T], nan[F], class[C], confidence[K], label_total[C],
               label_correct[C]
    float64[4F] mean, m2, lo, hi  (lo = +inf and hi = -inf where a feature has no finite value)

:func:`unpack_many` refuses — one reason per refused vector, never an exception — whatever
:class:`DriftSummary` refuses (the same limits and consistency checks: counts in
``0..MAX_COUNT``, bin totals, finite moments inside the range, prediction and label totals) and
anything not laid out for the given reference (fingerprint, bins per feature, classes,
confidence bins). An accepted vector is a :class:`PackedSummary`: numpy views of the numbers,
with :meth:`PackedSummary.to_summary` when the pydantic form is needed (merging for
publishing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

from edgefleet.drift.reference import ReferenceProfile
from edgefleet.drift.state import SCHEMA_VERSION, SummaryState, layout
from edgefleet.drift.summary import (
    MAX_BINS,
    MAX_CLASSES,
    MAX_CONFIDENCE_BINS,
    MAX_COUNT,
    MAX_FEATURES,
    DriftSummary,
)
from edgefleet.errors import SummaryError

MAGIC = 0x3144534645  # "EFSD1"
_HEADER = 10
_FP_WORDS = 4
_MAX_MODEL = 256


@dataclass(eq=False, slots=True)
class Batch:
    """The numbers of the vectors decoded together, stacked (``[vectors, ...]``): what the
    stacked baseline update reads (:func:`stack_rows`) without stacking them again."""

    lengths: np.ndarray  # int64 [F]
    n: np.ndarray  # int64 [B]
    counts: np.ndarray  # float64 [B, F]: finite values per feature
    mean: np.ndarray  # float64 [B, F]
    m2: np.ndarray  # float64 [B, F]
    bins: np.ndarray  # int64 [B, T]
    lab_total: np.ndarray  # int64 [B]: labelled predictions
    lab_correct: np.ndarray  # int64 [B]
    sections: dict[str, np.ndarray]  # nan, cls, conf, lt, lc, lo, hi: [B, ...]


#: One decoded vector: (model name words, version, n, fingerprint, batch, row), or a refusal.
_Decoded: TypeAlias = tuple[int, int, int, str, Batch, int] | str


def stack_rows(items: Sequence[PackedSummary], names: Sequence[str]) -> list[np.ndarray]:
    """Fields ``names`` of :class:`Batch` for ``items``, one row each: copies, indexed out of
    their batch when they were decoded together."""
    first = items[0].batch
    rows = [s.row for s in items]
    if sum(s.batch is first for s in items) == len(items):
        index = np.asarray(rows)
        return [np.asarray(getattr(first, name)[index]) for name in names]
    out = []
    for name in names:
        parts = [getattr(s.batch, name)[s.row] for s in items]
        out.append(np.asarray(parts) if np.ndim(parts[0]) == 0
                   else np.concatenate(parts).reshape(len(items), -1))
    return out


@dataclass(eq=False, slots=True)
class PackedSummary:
    """One validated packed summary: numpy views of its numbers (see the module notes)."""

    blob: bytes
    model: str
    version: int
    reference_fingerprint: str
    n: int
    batch: Batch = field(repr=False)
    row: int = field(repr=False)
    _summary: list[DriftSummary] = field(default_factory=list, repr=False)

    # the numbers, read from the batch they were decoded with
    @property
    def lengths(self) -> np.ndarray:  # int64 [F]
        return self.batch.lengths

    @property
    def bins(self) -> np.ndarray:  # int64 [T], feature rows one after another
        return np.asarray(self.batch.bins[self.row])

    @property
    def mean(self) -> np.ndarray:  # float64 [F]
        return np.asarray(self.batch.mean[self.row])

    @property
    def m2(self) -> np.ndarray:  # float64 [F]
        return np.asarray(self.batch.m2[self.row])

    def _section(self, name: str) -> np.ndarray:
        return np.asarray(self.batch.sections[name][self.row])

    @property
    def nan(self) -> np.ndarray:  # int64 [F]
        return self._section("nan")

    @property
    def cls(self) -> np.ndarray:  # int64 [C]
        return self._section("cls")

    @property
    def conf(self) -> np.ndarray:  # int64 [K]
        return self._section("conf")

    @property
    def lab_total(self) -> np.ndarray:  # int64 [C]
        return self._section("lt")

    @property
    def lab_correct(self) -> np.ndarray:  # int64 [C]
        return self._section("lc")

    @property
    def lo(self) -> np.ndarray:  # float64 [F]
        return self._section("lo")

    @property
    def hi(self) -> np.ndarray:  # float64 [F]
        return self._section("hi")

    def counts(self) -> np.ndarray:
        """Finite values per feature."""
        return self.n - self.nan

    def variance(self) -> np.ndarray:
        """Population variance per feature (0 where a feature has no finite value)."""
        return self.m2 / np.maximum(self.counts(), 1).astype(np.float64)

    def same(self, other: object) -> bool:
        return isinstance(other, PackedSummary) and other.blob == self.blob

    def check_reference(self, reference: ReferenceProfile) -> None:
        """Raise :class:`SummaryError` unless this summary was made against ``reference``."""
        if self.reference_fingerprint != reference.fingerprint:
            raise SummaryError("summary bins do not match the reference (fingerprint)")

    def to_state(self) -> SummaryState:
        width = int(self.lengths.max())
        bins = np.zeros((self.lengths.size, width), dtype=np.int64)
        bins[np.arange(width) < self.lengths[:, None]] = self.bins
        return SummaryState(self.lengths.copy(), self.n, bins, self.nan.copy(), self.mean.copy(),
                            self.m2.copy(), self.lo.copy(), self.hi.copy(), self.cls.copy(),
                            self.conf.copy(), self.lab_total.copy(), self.lab_correct.copy())

    def to_summary(self) -> DriftSummary:
        """The same numbers as a :class:`DriftSummary` (built and validated once)."""
        if not self._summary:
            self._summary.append(DriftSummary.from_state(
                self.to_state(), self.model, self.version, self.reference_fingerprint))
        return self._summary[0]


# --- encoding -----------------------------------------------------------------------------------
def pack_state(state: SummaryState, model: str, version: int, fingerprint: str) -> bytes:
    """The packed vector of ``state``'s numbers (see the module notes)."""
    name = model.encode()
    fp = bytes.fromhex(fingerprint)
    if len(fp) != 32:
        raise SummaryError("reference_fingerprint must be 64 hex digits")
    lengths = np.asarray(state.lengths, dtype=np.int64)
    keep = np.arange(state.bins.shape[1]) < lengths[:, None]
    bins = np.asarray(state.bins, dtype=np.int64)[keep]
    f, c, k = lengths.size, state.cls.size, state.conf.size
    header = np.asarray([MAGIC, SCHEMA_VERSION, version, state.n, f, c, k, bins.size, len(name),
                         0], dtype="<i8")
    ints = np.concatenate([lengths, bins, state.nan, state.cls, state.conf, state.lab_total,
                           state.lab_correct]).astype("<i8")
    floats = np.concatenate([state.mean, state.m2, state.lo, state.hi]).astype("<f8")
    pad = b"\0" * (-len(name) % 8)
    return b"".join([header.tobytes(), fp, name, pad, ints.tobytes(), floats.tobytes()])


def pack(summary: DriftSummary) -> bytes:
    """The packed vector of a :class:`DriftSummary`."""
    return pack_state(summary.to_state(), summary.model, summary.version,
                      summary.reference_fingerprint)


def merge_summaries(items: Sequence[DriftSummary | PackedSummary]) -> DriftSummary:
    """Merge compatible summaries of either form into one :class:`DriftSummary` (the states are
    merged as arrays; one pydantic model is built at the end)."""
    if not items:
        raise SummaryError("nothing to merge: no summaries given")
    head = items[0]
    key = (head.model, head.version, head.reference_fingerprint)
    state = head.to_state()
    for s in items[1:]:
        if (s.model, s.version, s.reference_fingerprint) != key:
            raise SummaryError("cannot merge summaries of other models, versions or bins")
        other = s.to_state()
        if (not np.array_equal(other.lengths, state.lengths) or other.cls.size != state.cls.size
                or other.conf.size != state.conf.size):
            raise SummaryError("cannot merge summaries with different bin layouts")
        state = state.merged(other)
    return DriftSummary.from_state(state, *key)


# --- decoding -----------------------------------------------------------------------------------
def unpack(blob: object, reference: ReferenceProfile) -> PackedSummary:
    """One vector (:class:`SummaryError` with the reason when it is refused)."""
    out = unpack_many([blob], reference)[0]
    if isinstance(out, str):
        raise SummaryError(out)
    return out


def unpack_many(blobs: Sequence[object], reference: ReferenceProfile
                ) -> list[PackedSummary | str]:
    """Decode and validate vectors laid out for ``reference``; a reason for each refused one.

    Vectors of the reference's layout all have the same length, so they are stacked into one
    ``[vectors, words]`` array and checked together.
    """
    lengths = layout(reference)
    f, c = lengths.size, reference.n_classes
    k = len(reference.confidence_bin_edges) + 1
    out: list[PackedSummary | str] = ["not a packed drift summary"] * len(blobs)
    fixed = 8 * (_HEADER + _FP_WORDS + 6 * f + int(lengths.sum()) + 3 * c + k)
    sizes = range(fixed + 8, fixed + 8 * (-(-_MAX_MODEL // 8)) + 1, 8)  # by name length
    by_size: dict[int, list[int]] = {}
    for i, b in enumerate(blobs):
        if isinstance(b, bytes) and len(b) in sizes:
            by_size.setdefault(len(b), []).append(i)
        elif isinstance(b, bytes) and len(b) >= 8 * _HEADER and len(b) % 8 == 0:
            out[i] = "packed summary not laid out for this reference"
    if (not 1 <= f <= MAX_FEATURES or int(lengths.max()) > MAX_BINS + 2
            or not 1 <= c <= MAX_CLASSES or not 1 <= k <= MAX_CONFIDENCE_BINS):
        return ["the reference's layout exceeds the summary limits"] * len(blobs)
    for idx in by_size.values():
        rows = np.frombuffer(b"".join(blobs[i] for i in idx),  # type: ignore[misc]
                             dtype="<i8").reshape(len(idx), -1)
        for i, res in zip(idx, _decode_group(rows, lengths, c, k, reference), strict=True):
            out[i] = res if isinstance(res, str) else _summary(blobs[i], res)  # type: ignore[arg-type]  # blobs[i] is bytes
    return out


def _decode_group(rows: np.ndarray, lengths: np.ndarray, c: int, k: int,
                  reference: ReferenceProfile) -> list[_Decoded]:
    """Vectors of one length as a ``[B, words]`` int64 array: their fields, or reasons."""
    words = rows.shape[1]
    f, t = lengths.size, int(lengths.sum())
    h = rows[:, :_HEADER]
    name_words = (h[:, 8] + 7) // 8
    shape_ok = ((h[:, 0] == MAGIC) & (h[:, 4] == f) & (h[:, 5] == c) & (h[:, 6] == k)
                & (h[:, 7] == t) & (h[:, 8] >= 1) & (h[:, 8] <= _MAX_MODEL)
                & (_HEADER + _FP_WORDS + name_words + 2 * f + t + 3 * c + k + 4 * f
                   == words))
    schema_ok = h[:, 1] == SCHEMA_VERSION
    results: list[_Decoded] = [
        "" if ok else ("packed summary not laid out for this reference" if not shaped else
                       f"schema version is not supported (this build reads version "
                       f"{SCHEMA_VERSION})")
        for ok, shaped in zip((shape_ok & schema_ok).tolist(), shape_ok.tolist(), strict=True)]
    live = np.flatnonzero(shape_ok & schema_ok)
    if not live.size:
        return results
    # rows of one length share a name length exactly when the layout says so: group by it
    words_live = name_words[live]
    lengths_of_names = ([int(words_live[0])] if np.all(words_live == words_live[0])
                        else np.unique(words_live).tolist())
    for m in lengths_of_names:
        sel = live[name_words[live] == m]
        group = rows if sel.size == rows.shape[0] else rows[sel]
        for i, res in zip(sel.tolist(), _check_rows(group, int(m), lengths, c, k, reference),
                          strict=True):
            results[i] = res
    return results


def _check_rows(rows: np.ndarray, m: int, lengths: np.ndarray, c: int, k: int,
                reference: ReferenceProfile) -> list[_Decoded]:
    """The value checks of :class:`DriftSummary`, over rows of one layout at once."""
    f, t = lengths.size, int(lengths.sum())
    start = _HEADER + _FP_WORDS + m
    parts = np.cumsum([0, f, t, f, c, k, c, c])
    ints = rows[:, start:start + parts[-1]]
    lens, bins, nan, cls, conf, lt, lc = (ints[:, parts[i]:parts[i + 1]] for i in range(7))
    floats = rows[:, start + parts[-1]:].view("<f8")
    mean, m2, lo, hi = (floats[:, i * f:(i + 1) * f] for i in range(4))
    n, version = rows[:, 3], rows[:, 2]
    fp = np.frombuffer(bytes.fromhex(reference.fingerprint), dtype="<i8")
    code = np.zeros(rows.shape[0], dtype=np.int64)  # index into _REASONS; 0: valid

    def refuse(mask: np.ndarray, why: int) -> None:
        code[mask & (code == 0)] = why

    refuse(~np.all(rows[:, _HEADER:_HEADER + _FP_WORDS] == fp[None, :], axis=1), 1)
    refuse(~np.all(lens == lengths[None, :], axis=1), 2)
    refuse(version < 0, 3)
    refuse((ints.min(axis=1) < 0) | (n < 0), 4)
    refuse((ints.max(axis=1) > MAX_COUNT) | (n > MAX_COUNT), 5)
    with np.errstate(invalid="ignore", over="ignore"):
        refuse(~(np.isfinite(mean).all(axis=1) & np.isfinite(m2).all(axis=1)), 6)
        refuse(m2.min(axis=1) < 0, 7)
        refuse(_feature_bad(lengths, n, bins, nan, mean, m2, lo, hi), 8)
    predicted = cls.sum(axis=1)
    refuse(conf.sum(axis=1) != predicted, 9)
    refuse(predicted > n, 10)
    refuse(np.any(lc > lt, axis=1), 11)
    refuse(lt.sum(axis=1) > predicted, 12)
    cnt = (n[:, None] - nan).astype(np.float64)
    batch = Batch(lengths, n, cnt, mean, m2, bins, lt.sum(axis=1), lc.sum(axis=1),
                  {"nan": nan, "cls": cls, "conf": conf, "lt": lt, "lc": lc, "lo": lo, "hi": hi})
    fingerprint = reference.fingerprint
    versions, counts = version.tolist(), n.tolist()
    return [_REASONS[c_i] if c_i else (m, versions[i], counts[i], fingerprint, batch, i)
            for i, c_i in enumerate(code.tolist())]


_REASONS = ("", "summary bins do not match the reference (fingerprint)",
            "summary layout does not match the reference's bins", "version must be >= 0",
            "negative counts", f"counts must be in 0..{MAX_COUNT}",
            "mean and m2 must be finite (NaN/inf moments)", "m2 must be >= 0",
            "feature bins, ranges or moments are inconsistent",
            "confidence_counts and class_counts must have the same total",
            "more predictions than rows", "label_correct exceeds label_total",
            "more labelled predictions than predictions")


def _feature_bad(lengths: np.ndarray, n: np.ndarray, bins: np.ndarray, nan: np.ndarray,
                 mean: np.ndarray, m2: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per row: any feature whose bins, range or moments do not add up (as ``_problems``)."""
    cnt = n[:, None] - nan
    sums = np.add.reduceat(bins, np.cumsum(lengths) - lengths, axis=1)
    bad_sum = sums != cnt
    empty = cnt == 0
    bad_empty = empty & ((lo != np.inf) | (hi != -np.inf) | (mean != 0.0) | (m2 != 0.0))
    live = ~empty
    bad_range = live & ~(np.isfinite(lo) & np.isfinite(hi) & (lo <= hi))
    checked = live & ~bad_range
    scale = np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
    tol = 1e-9 * scale
    bad_mean = checked & ~((lo - tol <= mean) & (mean <= hi + tol))
    bound = cnt * ((hi - lo) ** 2 / 4.0 + tol * scale) * (1 + 1e-9)
    bad_m2 = checked & ~bad_mean & (m2 > bound)
    return np.any(bad_sum | bad_empty | bad_range | bad_mean | bad_m2, axis=1)


def _summary(blob: bytes, d: tuple[int, int, int, str, Batch, int]) -> PackedSummary | str:
    m, version, n, fingerprint, batch, row = d
    raw = blob[8 * (_HEADER + _FP_WORDS):8 * (_HEADER + _FP_WORDS + m)]
    size = int.from_bytes(blob[64:72], "little", signed=True)
    try:
        model = raw[:size].decode()
    except UnicodeDecodeError:
        return "model name is not UTF-8"
    if raw[size:].strip(b"\0") or not model:
        return "model name must have 1-256 characters"
    return PackedSummary(blob, model, version, fingerprint, n, batch, row)
