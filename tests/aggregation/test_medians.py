"""``column_median`` is ``np.median(axis=0)`` to the bit."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation.medians import column_median


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 99, 100, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_median_is_numpys_median_to_the_bit(rows: int, dtype: type) -> None:
    rng = np.random.default_rng(rows)
    stack: np.ndarray = rng.standard_normal((rows, 257)).astype(dtype)
    stack[: rows // 3, :5] = 0.5  # ties
    got, want = column_median(stack), np.median(stack, axis=0)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_a_stack_with_nan_gets_numpys_answer() -> None:
    stack = np.arange(40, dtype=np.float32).reshape(8, 5)
    stack[3, 2] = np.nan
    got, want = column_median(stack), np.median(stack, axis=0)
    assert np.array_equal(got, want, equal_nan=True) and np.isnan(got[2])


def test_the_input_is_left_as_it_was() -> None:
    stack = np.random.default_rng(0).standard_normal((10, 7)).astype(np.float32)
    before = stack.copy()
    column_median(stack)
    assert np.array_equal(stack, before)
