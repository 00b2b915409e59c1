"""The one CSR builder every scorer uses: from Python lists, from Arrow lists, and sliced."""

import numpy as np
import pyarrow as pa

from sparkrec.ragged import arrow_csr, csr, slice_csr


def test_csr_treats_missing_lists_as_empty_and_keeps_order():
    indptr, flat = csr([np.array([3, 1]), None, np.array([], dtype=np.int64), np.array([7])])
    assert indptr.tolist() == [0, 2, 2, 2, 3]
    assert flat.tolist() == [3, 1, 7]
    indptr, flat = csr([], np.float32)
    assert indptr.tolist() == [0] and flat.dtype == np.float32 and len(flat) == 0


def test_arrow_csr_matches_csr_of_the_same_lists():
    lists = [[5, 2, 9], None, [], [4]]
    a_indptr, a_flat = arrow_csr(pa.array(lists, type=pa.list_(pa.int32())))
    p_indptr, p_flat = csr([None if x is None else np.array(x) for x in lists])
    assert a_indptr.tolist() == p_indptr.tolist() and a_flat.tolist() == p_flat.tolist()
    assert a_flat.dtype == np.int64


def test_slice_csr_rebases_rows():
    indptr, flat = csr([np.array([1, 2]), np.array([3]), np.array([4, 5, 6])])
    sub_indptr, sub_flat = slice_csr(indptr, flat, 1, 3)
    assert sub_indptr.tolist() == [0, 1, 4] and sub_flat.tolist() == [3, 4, 5, 6]
