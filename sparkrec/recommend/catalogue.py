"""Per model row (item_idx + 1): ids, explanation facts and what request filters test.

Loaded once (one small Spark query) by whatever scores outside Spark: the HTTP service and a
streaming micro-batch folded in by the driver (:mod:`sparkrec.stream.driver`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lake import Lake
from .explain import item_facts
from .template import ItemFacts


@dataclass(frozen=True)
class Catalogue:
    """Per model row (item_idx + 1; row 0 is padding): ids, facts and what request filters test."""

    rows: dict[str, int]  # item_id -> model row (only items the model knows)
    ids: list[str | None]
    facts: ItemFacts
    genres: dict[str, np.ndarray]  # genre -> model rows having it
    year: np.ndarray  # float32, NaN where unknown
    has_id: np.ndarray  # bool: items with training interactions (not cold)


def load_catalogue(lake: Lake, n_items: int, has_id: np.ndarray) -> Catalogue:
    """Item ids, explanation facts and filter columns, by model row, for ``n_items`` items;
    ``has_id``: per model row, not cold (what ``exclude_cold_items`` keeps)."""
    n = n_items + 1
    feats = lake.read("item_features")
    facts = item_facts(feats).join(feats.select("item_idx", "genres", "year"), "item_idx").toPandas()
    facts = facts[(facts["item_idx"] >= 0) & (facts["item_idx"] < n - 1)]
    rows = (facts["item_idx"].to_numpy(np.int64) + 1).tolist()
    ids: list[str | None] = [None] * n
    titles: list[str | None] = [None] * n
    attrs: list[list[str]] = [[] for _ in range(n)]
    notes: list[str | None] = [None] * n
    year = np.full(n, np.nan, np.float32)
    by_genre: dict[str, list[int]] = {}
    for r, item_id, title, a, note, genres, y in zip(rows, facts["item_id"], facts["title"], facts["attrs"],
                                                     facts["popularity_note"], facts["genres"], facts["year"],
                                                     strict=True):
        ids[r], titles[r], notes[r] = item_id, title, note
        attrs[r] = [str(x) for x in a] if a is not None else []
        if y is not None and not (isinstance(y, float) and np.isnan(y)):
            year[r] = float(y)
        for g in (genres if genres is not None else []):
            by_genre.setdefault(str(g), []).append(r)
    return Catalogue(rows={i: r for r, i in enumerate(ids) if i is not None}, ids=ids,
                     facts=ItemFacts(titles, attrs, notes),
                     genres={g: np.array(v, np.int64) for g, v in by_genre.items()}, year=year,
                     has_id=np.asarray(has_id, bool))
