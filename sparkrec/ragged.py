"""Ragged per-user lists (seen items, targets, weights) as flat CSR arrays.

Below every package that scores, so the trainer's validation and the serving top-K share one
builder instead of each keeping a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def csr(lists: Sequence[np.ndarray | None] | np.ndarray, dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, flat values) of a ragged list of arrays; the form seen-item masks use. A None
    entry (a pandas column's missing list) is an empty list."""
    lengths = np.fromiter((0 if x is None else len(x) for x in lists), dtype=np.int64, count=len(lists))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    parts = [np.asarray(x, dtype=dtype) for x in lists if x is not None and len(x)]
    return indptr, np.concatenate(parts) if parts else np.zeros(0, dtype)


def arrow_csr(column: pa.Array | pa.ChunkedArray, dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """:func:`csr` of an Arrow list column without going through Python lists (the scoring
    path reads its batches' history and seen-item columns this way); null lists are empty."""
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(dtype)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), flat


def slice_csr(indptr: np.ndarray, values: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start:stop`` of a CSR pair, re-based so the slice's indptr starts at 0."""
    lo, hi = indptr[start], indptr[stop]
    return indptr[start:stop + 1] - lo, values[lo:hi]
