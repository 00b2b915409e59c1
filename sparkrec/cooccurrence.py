"""Item-item co-occurrence (the Gram matrix X^T X), on executors or on the driver.

ItemKNN needs it as a table of pairs, EASE and the hybrid's linear head as a dense matrix on
the driver; all get it from here (a shared numeric primitive, so it sits below both the
baselines and the model). On executors (``gram``): a plain Spark self-join makes one row per
(user, item, item) triple and then hashes them all; here each executor expands a block of user
histories into pair keys with numpy, sums equal keys itself, and Spark only adds up the
per-block partial sums. Same result, an order of magnitude fewer rows through the shuffle.

The cost is still sum over users of |history|^2, so one user with thousands of items
dominates: the baselines' ``max_user_history`` keeps each user's most recent N positives.

A dense Gram is multiplied out on the driver instead (``driver_gram``, scipy) when X's entries
are few enough to collect (12-16 bytes each, fewer than the m x m result's on data of the sizes
EASE can invert): a Spark job per Gram cost more than the product itself, 78.5 s against 6.3 s
for a 5,000-item head on Book-Crossing (``benchmarks/head_gram.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

GRAM_SCHEMA = T.StructType([T.StructField("i", T.IntegerType()), T.StructField("j", T.IntegerType()),
                            T.StructField("value", T.DoubleType())])


def _pair_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (a, b) of every ordered pair of elements within each list, the lists laid
    end to end with ``lengths`` elements each."""
    starts = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(len(lengths)), lengths)  # list of each element
    reps = lengths[owner]  # each element pairs with every element of its own list
    first = np.repeat(np.arange(int(lengths.sum())), reps)
    second = np.repeat(starts[owner], reps) + (np.arange(len(first)) - np.repeat(np.cumsum(reps) - reps, reps))
    return first, second


def _sum_by_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=values, minlength=len(unique))


def _pack(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return (i.astype(np.int64) << 32) | (j.astype(np.int64) & 0xFFFFFFFF)


def _unpack(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (keys >> 32).astype(np.int32), (keys & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def _chunks(lengths: np.ndarray, max_pairs: int) -> Iterator[tuple[int, int, int, int]]:
    """(first list, end list, first element, end element) of runs of lists whose pair count
    fits in ``max_pairs``; a single longer list is a run of its own."""
    ends = np.cumsum(lengths)
    pairs = np.cumsum(lengths * lengths)
    lo = 0
    while lo < len(lengths):
        base = pairs[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(pairs, base + max_pairs, "right")))
        yield lo, hi, int(ends[lo - 1]) if lo else 0, int(ends[hi - 1])
        lo = hi


def batch_pair_sums(lengths: np.ndarray, items: np.ndarray, values: np.ndarray, include_diagonal: bool,
                    max_pairs: int, dense_cells: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """(packed (i, j) keys, summed x_ui * x_uj) over the pairs within each list.

    When the block's distinct items fit a dense (m x m) accumulator, pairs are summed with
    one bincount (no sort); otherwise equal keys are summed after a sort, chunk by chunk.
    """
    local_ids, local = np.unique(items, return_inverse=True)
    m = len(local_ids)
    dense = np.zeros(m * m) if m * m <= dense_cells else None
    keys: list[np.ndarray] = []
    sums: list[np.ndarray] = []
    for lo, hi, a, _ in _chunks(lengths, max_pairs):
        first, second = _pair_positions(lengths[lo:hi])
        first, second = first + a, second + a
        if not include_diagonal:
            keep = items[first] != items[second]
            first, second = first[keep], second[keep]
        products = values[first] * values[second]
        if dense is not None:
            dense += np.bincount(local[first] * m + local[second], weights=products, minlength=m * m)
        else:
            k, v = _sum_by_key(_pack(items[first], items[second]), products)
            keys.append(k)
            sums.append(v)
    if dense is not None:
        cells = np.flatnonzero(dense)
        return _pack(local_ids[cells // m], local_ids[cells % m]), dense[cells]
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return _sum_by_key(np.concatenate(keys), np.concatenate(sums))


def _gram_batches(include_diagonal: bool, max_pairs: int):
    schema = pa.schema([("i", pa.int32()), ("j", pa.int32()), ("value", pa.float64())])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # Partial sums are merged across the whole partition, so what leaves it is at most
        # one row per distinct pair, however many users the partition holds.
        keys: list[np.ndarray] = []
        sums: list[np.ndarray] = []
        held = 0
        for batch in batches:
            lengths = pc.list_value_length(batch.column("items")).to_numpy(zero_copy_only=False)
            items = pc.list_flatten(batch.column("items")).to_numpy(zero_copy_only=False)
            values = pc.list_flatten(batch.column("values")).to_numpy(zero_copy_only=False)
            k, v = batch_pair_sums(lengths.astype(np.int64), items, values.astype(np.float64),
                                   include_diagonal, max_pairs)
            keys.append(k)
            sums.append(v)
            held += len(k)
            if held > max_pairs and len(keys) > 1:
                merged = _sum_by_key(np.concatenate(keys), np.concatenate(sums))
                keys, sums, held = [merged[0]], [merged[1]], len(merged[0])
        if not keys:
            return
        k, v = _sum_by_key(np.concatenate(keys), np.concatenate(sums)) if len(keys) > 1 else (keys[0], sums[0])
        step = 1_000_000
        for start in range(0, len(k), step):
            i, j = _unpack(k[start:start + step])
            yield pa.RecordBatch.from_arrays([pa.array(i), pa.array(j), pa.array(v[start:start + step])],
                                            schema=schema)

    return run


def gram(x: DataFrame, include_diagonal: bool = True, max_pairs: int = 4_000_000) -> DataFrame:
    """(i, j, value) with value = sum_u x_ui * x_uj over users who have both, both orders.

    ``x`` is (user_idx, item_idx, value) with one row per pair; ``max_pairs`` bounds the
    pairs one executor expands at once (memory, about 40 bytes a pair).
    """
    pair = F.struct(F.col("item_idx").cast("int").alias("i"), F.col("value").cast("double").alias("v"))
    lists = (x.groupBy("user_idx").agg(F.collect_list(pair).alias("h"))
             .select(F.col("h.i").alias("items"), F.col("h.v").alias("values")))
    partial = lists.mapInArrow(_gram_batches(include_diagonal, max_pairs), GRAM_SCHEMA)
    # Partials are already summed per partition, so nothing is lost by shuffling before the
    # final sum; hashing by i alone lets a later per-item window reuse this partitioning.
    return partial.repartition("i").groupBy("i", "j").agg(F.sum("value").alias("value"))


def driver_gram(x: Any, dtype: type = np.float64, max_block: int = 20_000_000) -> np.ndarray:
    """X^T X of a scipy sparse users x items matrix, dense, in column blocks of at most
    ``max_block`` entries, so the sparse partial products stay within ~250 MB whatever the
    number of items (duplicate entries of a user and item count as their sum)."""
    xt, xc = x.T.tocsr(), x.tocsc()
    n = x.shape[1]
    g = np.empty((n, n), dtype=dtype)
    block = max(1, max_block // max(n, 1))
    for start in range(0, n, block):
        g[:, start:start + block] = (xt @ xc[:, start:start + block]).toarray()
    return g
