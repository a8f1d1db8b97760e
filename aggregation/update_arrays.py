"""An update's arrays: decoded against the plan's weight spec, stacked in blocks of coordinates.

:func:`decode_array` checks one reply array's declared and decoded shape and dtype against a
:class:`WantedArray` (one weight of the spec) and records a refusal on the node's
:class:`~aggregation.validation_types.Verdict` when they differ; an array whose bytes are exactly
what ``np.save`` writes for the spec is read as a view of them, without parsing its header.
:func:`blocks` stacks equally long 1-D arrays in column blocks of at most :data:`BLOCK_ELEMENTS`
values, for :class:`aggregation.validation.UpdateValidator` and
:func:`aggregation.linear.weighted_mean`.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array

from aggregation.validation_types import RefusalReason, Verdict
from edgefleet.plan import WeightSpec

_DECODE_ERRORS = (ValueError, TypeError, OSError, EOFError)
BLOCK_ELEMENTS = 1 << 22  # values (replies x coordinates) stacked at a time


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


@dataclass(frozen=True)
class WantedArray:
    """One weight of the spec, as the decoder compares it: shape, dtype, the ``.npy`` bytes."""

    shape: tuple[int, ...]
    dtype: np.dtype
    dtype_name: str
    header: bytes
    nbytes: int

    @classmethod
    def of(cls, spec: WeightSpec) -> WantedArray:
        shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
        header = _npy_header(shape, dtype.str)
        size = len(header) + math.prod(shape) * dtype.itemsize
        return cls(shape, dtype, dtype.name, header, size)


def decode_array(verdict: Verdict, name: str, array: Array, want: WantedArray) -> np.ndarray | None:
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


def _fast_numpy(array: Array, want: WantedArray) -> np.ndarray | None:
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

