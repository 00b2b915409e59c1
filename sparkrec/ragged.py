"""Ragged per-user lists (seen items, targets, weights) as flat CSR arrays.

Below every package that scores, so the trainer's validation and the serving top-K share one
builder instead of each keeping a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def csr(lists: Sequence[np.ndarray] | np.ndarray, dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, flat values) of a ragged list of arrays; the form seen-item masks use."""
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate([np.asarray(x, dtype=dtype) for x in lists]) if len(lists) else np.zeros(0, dtype)
    return indptr, flat
