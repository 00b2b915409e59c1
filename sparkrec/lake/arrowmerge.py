"""A MERGE of a small source planned in the driver process with Arrow instead of Spark.

Why: a streaming micro-batch or a partial refresh MERGEs tens to thousands of rows, and the
Spark plan for it (the uniqueness check, the counts, the changed rows, the stale keys, the
files that hold them, the rows those files keep) is half a dozen jobs whose scheduling, not
their data, costs seconds each: most of a micro-batch's latency. When the source is small and
the target files that can hold its keys are few (file statistics prune the rest), reading
those files with pyarrow and joining them in Acero plans the same MERGE in milliseconds.

The semantics and the counts are :meth:`sparkrec.lake.base.Lake.merge_plan`'s: new keys
inserted, rows whose other columns differ updated, identical rows left alone, keys of a
``replace_within`` group that the source no longer has deleted; keys holding a null match
nothing, as in Spark's equality joins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .base import check_replace_within, duplicate_key_error

_SRC, _ROW = "__sparkrec_src", "__sparkrec_row"


@dataclass
class ArrowMergePlan:
    """What the MERGE writes: the changed source rows, and per touched target file (its
    position in the list planned on) the rows it loses."""

    changed: pa.Table
    dropped: dict[int, np.ndarray]
    counts: dict[str, int]
    # per changed row: the target file that held rows of its group (replace_within, else its
    # keys) before, -1 for a group no target file held
    homes: np.ndarray

    def changed_for(self, file: int | None, rewritten: set[int] | None = None) -> pa.Table:
        """The changed rows whose group lived in ``file``; with None, those whose group lived
        in none of the ``rewritten`` files (they need a file of their own)."""
        if file is not None:
            return self.changed.filter(pa.array(self.homes == file))
        return self.changed.filter(pa.array(~np.isin(self.homes, sorted(rewritten or ()))))


def check_unique(table: str, source: pa.Table, keys: list[str]) -> None:
    per_key = source.select(keys).group_by(keys).aggregate([([], "count_all")])
    dup = per_key.filter(pc.greater(per_key["count_all"], 1))
    if dup.num_rows:
        first = dup.slice(0, 1).to_pylist()[0]
        raise duplicate_key_error(table, {k: first[k] for k in keys}, first["count_all"])


def overlapping_files(values: dict[str, np.ndarray], mins: dict[str, Sequence], maxs: dict[str, Sequence],
                      n_files: int) -> np.ndarray:
    """Which files may hold a row whose every column in ``values`` (the source's sorted
    distinct non-null values) takes one of those values, judged from the files' min/max
    statistics; a file without statistics for a column may."""
    keep = np.ones(n_files, dtype=bool)
    for col, vals in values.items():
        for i, (lo, hi) in enumerate(zip(mins.get(col, [None] * n_files), maxs.get(col, [None] * n_files),
                                         strict=True)):
            if not keep[i] or lo is None or hi is None:
                continue
            at = np.searchsorted(vals, lo, side="left")
            keep[i] = at < len(vals) and vals[at] <= hi
    return keep


def sorted_values(source: pa.Table, columns: list[str]) -> dict[str, np.ndarray]:
    """The distinct non-null values of the source's numeric and string columns among
    ``columns`` (the ones file statistics can prune on). Strings sort by code point, which is
    the UTF-8 byte order Delta's statistics use."""
    out = {}
    for col in columns:
        arr = source.column(col)
        if has_bounds(arr.type):
            out[col] = np.unique(pc.drop_null(arr).to_numpy(zero_copy_only=False))
    return out


def has_bounds(type_: pa.DataType) -> bool:
    """Whether the lake writes min/max statistics for a column of this type (numbers, strings)."""
    return (pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_string(type_)
            or pa.types.is_large_string(type_))


def plan_merge(table: str, source: pa.Table, targets: list[pa.Table], keys: list[str],
               replace_within: list[str] | None) -> ArrowMergePlan:
    """Plans the MERGE of ``source`` into the rows of ``targets`` (every target file that can
    hold one of its keys, cast to the source's schema)."""
    check_unique(table, source, keys)
    if replace_within:
        check_replace_within(replace_within, keys)
    sizes = [t.num_rows for t in targets]
    target = pa.concat_tables(targets) if targets else source.schema.empty_table()
    source_keys = source.select(keys).append_column(_SRC, pa.array(np.arange(source.num_rows)))
    target_keys = _in_source_groups(target, source, keys, replace_within or keys)

    matched = source_keys.join(target_keys, keys, join_type="inner")
    src_rows, tgt_rows = _positions(matched, _SRC), _positions(matched, _ROW)
    same = _rows_equal(source.take(src_rows), target.take(tgt_rows), [c for c in source.column_names
                                                                     if c not in keys])
    inserted = _positions(source_keys.join(target_keys.select(keys), keys, join_type="left anti"), _SRC)
    updated_src, updated_tgt = src_rows[~same], tgt_rows[~same]
    stale = np.zeros(0, dtype=np.int64)
    if replace_within:
        groups = source.select(replace_within).group_by(replace_within).aggregate([])
        in_groups = target_keys.join(groups, replace_within, join_type="left semi")
        stale = _positions(in_groups.join(source_keys.select(keys), keys, join_type="left anti"), _ROW)
    changed = source.take(np.sort(np.concatenate([inserted, updated_src])))
    counts = {"inserted": len(inserted), "updated": len(updated_src),
              "unchanged": int(same.sum()), "deleted": len(stale)}
    homes = _homes(changed, target_keys, replace_within or keys, sizes)
    return ArrowMergePlan(changed, _per_file(np.concatenate([updated_tgt, stale]), sizes), counts, homes)


def membership(values: dict[str, pa.Array]) -> pc.Expression | None:
    """Rows whose every column takes one of its ``values`` (a superset of a MERGE's matches
    when the columns are several: their values are tested one by one)."""
    test = None
    for col, vals in values.items():
        one = pc.field(col).isin(vals)
        test = one if test is None else test & one
    return test


def _in_source_groups(target: pa.Table, source: pa.Table, keys: list[str], groups: list[str]) -> pa.Table:
    """The target's ``keys`` and row positions (``_ROW``) of the rows whose ``groups`` columns
    take the source's values (:func:`membership`): a superset of the rows any join below can
    match. Why: a refresh of 400 users' lists reads the ~350 files holding them, ~450k rows, of
    which 8,000 are theirs, and hash-joining all of them cost most of the plan (0.44 of 0.66 s)."""
    indexed = target.select(keys).append_column(_ROW, pa.array(np.arange(target.num_rows)))
    return indexed.filter(membership({c: pc.unique(source.column(c)) for c in groups}))


def _homes(changed: pa.Table, target_keys: pa.Table, groups: list[str], sizes: list[int]) -> np.ndarray:
    """Per changed row, the target file holding the first target row of its group, or -1."""
    if not changed.num_rows:
        return np.zeros(0, dtype=np.int64)
    first = target_keys.group_by(groups).aggregate([(_ROW, "min")])
    rows = changed.select(groups).append_column(_SRC, pa.array(np.arange(changed.num_rows)))
    found = rows.join(first, groups, join_type="inner")
    starts = np.cumsum([0, *sizes])
    homes = np.full(changed.num_rows, -1, dtype=np.int64)
    homes[_positions(found, _SRC)] = np.searchsorted(starts, _positions(found, f"{_ROW}_min"), side="right") - 1
    return homes


def _positions(t: pa.Table, column: str) -> np.ndarray:
    return t.column(column).to_numpy().astype(np.int64, copy=False)


def _per_file(rows: np.ndarray, sizes: list[int]) -> dict[int, np.ndarray]:
    """Global row positions of the concatenated targets, as each file's own positions."""
    starts = np.cumsum([0, *sizes])
    owner = np.searchsorted(starts, rows, side="right") - 1
    return {int(f): rows[owner == f] - starts[f] for f in np.unique(owner)}


def _rows_equal(a: pa.Table, b: pa.Table, columns: list[str]) -> np.ndarray:
    """Row by row: whether every column is equal, nulls equal to nulls and NaN to NaN (as
    Spark's JSON row hash sees them)."""
    same = np.ones(a.num_rows, dtype=bool)
    flat = [c for c in columns if not pa.types.is_nested(a.schema.field(c).type)]
    for col in flat:
        same &= column_equal(a.column(col), b.column(col))
    # nested values are compared in Python, so only on the rows still equal: a refreshed list's
    # rows mostly differ in their score already, and comparing each one's explanation evidence
    # cost ~1 s a batch of 750 Book-Crossing users
    for col in (c for c in columns if c not in flat):
        rows = np.flatnonzero(same)
        if not len(rows):
            break
        same[rows] = column_equal(a.column(col).take(rows), b.column(col).take(rows))
    return same


def column_equal(x: pa.ChunkedArray, y: pa.ChunkedArray) -> np.ndarray:
    """Element by element, nulls equal to nulls and NaN to NaN (as Spark's JSON row hash sees them)."""
    if pa.types.is_nested(x.type):  # lists, maps, structs: Acero compares no nested values
        return np.fromiter((p == q for p, q in zip(x.to_pylist(), y.to_pylist(), strict=True)),
                           dtype=bool, count=len(x))
    eq = pc.fill_null(pc.equal(x, y), False)
    eq = pc.or_(eq, pc.and_(pc.is_null(x), pc.is_null(y)))
    if pa.types.is_floating(x.type):
        eq = pc.or_(eq, pc.fill_null(pc.and_(pc.is_nan(x), pc.is_nan(y)), False))
    return eq.to_numpy(zero_copy_only=False).astype(bool)
