"""Exact top-K over a whole catalogue, one block of users at a time, inside ``mapInArrow``.

Models that score with a broadcast item matrix (EASE, ALS factors, content vectors, a
popularity vector) share this loop: each executor turns a block of user rows into a dense
(users x items) score matrix with one BLAS product, masks the items a user has seen, and
keeps the K best with the platform's one selection (:func:`sparkrec.selection.cut`, the same
running-threshold cut as the recommend job). Seen items are masked exactly, so no "ask for
K + max seen" margin is needed, and block size bounds executor memory whatever the catalogue size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame

from ..selection import cut
from .base import RECS_SCHEMA

ScoreBlock = Callable[[pa.RecordBatch], np.ndarray]
"""Maps a block of user rows to a writable float (rows x len(space)) score matrix."""

_ARROW_RECS = pa.schema([("user_idx", pa.int32()), ("item_idx", pa.int32()), ("rank", pa.int32()),
                         ("score", pa.float64())])


class ItemSpace:
    """The items a model has columns for, in ascending item_idx order.

    Models keep compact matrices over the items they know instead of sizing them by the
    largest item_idx, which for a catalogue with gaps or cold items wastes memory.
    """

    def __init__(self, item_ids: np.ndarray) -> None:
        self.item_ids = np.unique(np.asarray(item_ids, dtype=np.int64)).astype(np.int32)

    def __len__(self) -> int:
        return len(self.item_ids)

    def columns(self, item_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Column of each item_idx and whether the model knows it at all."""
        item_idx = np.asarray(item_idx, dtype=np.int64)
        if len(self.item_ids) == 0:
            return np.zeros(len(item_idx), dtype=np.int64), np.zeros(len(item_idx), dtype=bool)
        cols = np.searchsorted(self.item_ids, item_idx)
        cols = np.minimum(cols, len(self.item_ids) - 1)
        return cols, self.item_ids[cols] == item_idx

    def mask(self, item_idx: np.ndarray | None) -> np.ndarray | None:
        """Bool per column: is the column's item among ``item_idx``? None stays None (all)."""
        if item_idx is None:
            return None
        return np.isin(self.item_ids, np.asarray(item_idx, dtype=np.int64))


class LocallyScored(Protocol):
    """A model that can score a user in this process, without Spark (the HTTP service)."""

    name: str

    def local_scorer(self) -> tuple[ScoreBlock, ItemSpace]:
        """The scorer ``recommend`` runs on executors, over the driver-side matrices."""
        ...


def user_block(hist_items: np.ndarray, hist_weights: np.ndarray, seen: np.ndarray,
               user_idx: int = -1) -> pa.RecordBatch:
    """One user as the scorers read a block (``base.scoring_inputs``' columns): what the HTTP
    service hands :func:`block_top_k` for a request."""
    return pa.RecordBatch.from_arrays(
        [pa.array([user_idx], pa.int32()),
         pa.array([np.asarray(hist_items, np.int32)], pa.list_(pa.int32())),
         pa.array([np.asarray(hist_weights, np.float32)], pa.list_(pa.float32())),
         pa.array([np.asarray(seen, np.int32)], pa.list_(pa.int32()))],
        names=["user_idx", "hist_items", "hist_weights", "seen"])


def list_entries(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(row of each list element, the elements) of a list column; nulls are empty lists."""
    col = batch.column(name)
    rows = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return rows, values


def history_matrix(batch: pa.RecordBatch, space: ItemSpace, binary: bool = False) -> np.ndarray:
    """Dense (rows x items) float32 matrix of the users' positive histories in ``space``."""
    rows, items = list_entries(batch, "hist_items")
    out = np.zeros((batch.num_rows, len(space)), dtype=np.float32)
    cols, known = space.columns(items)
    if binary:
        out[rows[known], cols[known]] = 1.0
    else:
        _, weights = list_entries(batch, "hist_weights")
        np.add.at(out, (rows[known], cols[known]), weights[known].astype(np.float32))
    return out


def block_top_k(block: pa.RecordBatch, score_block: ScoreBlock, space: ItemSpace, k: int,
                exclude_seen: bool, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, min(k, items)) columns of ``space`` and scores, best first, for one block of user
    rows (``seen`` masked when ``exclude_seen``, ``allowed`` columns only); -1 / -inf where a
    row runs out. The one path from scores to a list: executors call it per block inside
    ``mapInArrow``, the HTTP service per request, so both give the same list."""
    scores = np.asarray(score_block(block))
    if scores.dtype.kind != "f" or not scores.flags.writeable:
        scores = scores.astype(np.float64)
    scores[~np.isfinite(scores)] = -np.inf
    if exclude_seen:
        rows, seen = list_entries(block, "seen")
        cols, known = space.columns(seen)
        scores[rows[known], cols[known]] = -np.inf
    # best score first, ties to the smaller item_idx (columns are sorted by it)
    return cut(scores, k, allowed)


def _as_recs(users: np.ndarray, idx: np.ndarray, vals: np.ndarray, item_ids: np.ndarray) -> pa.RecordBatch:
    kk = idx.shape[1]
    keep = np.isfinite(vals)  # masked (seen / unknown) items sort last, so ranks stay 1..m
    ranks = np.broadcast_to(np.arange(1, kk + 1, dtype=np.int32), vals.shape)
    return pa.RecordBatch.from_arrays(
        [pa.array(np.repeat(users, kk).reshape(vals.shape)[keep].astype(np.int32)),
         pa.array(item_ids[idx[keep]].astype(np.int32)), pa.array(ranks[keep]),
         pa.array(vals[keep].astype(np.float64))], schema=_ARROW_RECS)


def top_k_per_user(state: DataFrame, score_block: ScoreBlock, space: ItemSpace, k: int,
                   exclude_seen: bool = True, candidates: np.ndarray | None = None,
                   max_cells: int = 16_000_000) -> DataFrame:
    """Recommendations in the standard format for every row of ``state``.

    ``state`` has ``user_idx``, ``seen`` (array<int>, may be null) and whatever columns
    ``score_block`` reads. ``candidates`` (bool per column) removes items the model must
    never offer, e.g. items it has no data for. ``max_cells`` bounds the score block.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    item_ids = space.item_ids
    n_items = len(space)
    block_rows = int(max(1, min(4096, max_cells // max(n_items, 1))))
    allowed = None if candidates is None else np.asarray(candidates, dtype=bool)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for start in range(0, batch.num_rows, block_rows):
                block = batch.slice(start, block_rows)
                if block.num_rows == 0 or n_items == 0:
                    continue
                idx, vals = block_top_k(block, score_block, space, k, exclude_seen, allowed)
                yield _as_recs(block.column("user_idx").to_numpy(zero_copy_only=False), idx, vals, item_ids)

    return state.mapInArrow(run, RECS_SCHEMA)
