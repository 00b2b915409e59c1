"""Items added to the catalogue since training, served by the trained model without retraining.

Why: a new item must be recommendable from its text and fields as soon as it is in the
catalogue (cold start), not after the next training. The item tower was trained for this: its
id part is dropped at random while training and is absent for items without training
interactions (``has_id`` false), so an item the model has never seen is encoded exactly as a
cold item of the training catalogue is, from its text vector, categories and genres. Growing a
model is therefore only bookkeeping:

* catalogue rows for the new items: their text vectors, and category / genre codes from the
  model's own vocabularies (a value the vocabulary lacks is "other", as at training);
* the id embedding padded with zero rows (never read: ``has_id`` is false for them);
* where the collaborative head scores cold items through factors predicted from text
  (:func:`~sparkrec.model.factors.content_factors`), the new items' factors predicted by the
  same ridge map, so they are ranked like the training catalogue's cold items.

The model's own rows are untouched: a grown model scores the old items exactly as before.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from .build import build_model
from .data import GENRE_SLOTS, Catalog
from .factors import content_factors
from .head import LinearHead
from .registry import LoadedModel

# item_features' columns that the catalogue's codes are made from
FEATURE_COLUMNS = ["item_idx", "authors", "publisher", "year", "attributes", "genres"]


def _single_values(features: pd.DataFrame, name: str) -> list[Any]:
    """``build_catalog``'s single-valued fields, per row, as Spark computes them there."""
    if name == "author":
        return [a[0] if a is not None and len(a) else None for a in features["authors"]]
    if name == "publisher":
        return list(features["publisher"])
    if name == "year":
        return [None if y is None or (isinstance(y, float) and math.isnan(y)) else str(math.floor(y / 5) * 5)
                for y in features["year"]]
    if name.startswith("attr:"):
        key = name[len("attr:"):]
        return [dict(a).get(key) if a is not None else None for a in features["attributes"]]
    raise ValueError(f"the model's catalogue has category field {name!r}, which this version cannot compute")


def _code(value: Any, codes: dict[str, int]) -> int:
    """``data._codes``: 0 for no value, the vocabulary's code, or 1 ("other")."""
    if value is None or value == "":
        return 0
    return codes.get(str(value), 1)


def category_codes(catalog: Catalog, features: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(cats, genres) code rows for ``features``' items, in the catalogue's vocabularies."""
    cats = genres = None
    if catalog.cats is not None:
        cats = np.zeros((len(features), len(catalog.cat_fields)), np.int64)
        for j, name in enumerate(catalog.cat_fields):
            codes = {v: i + 2 for i, v in enumerate(catalog.vocabs[name])}
            cats[:, j] = [_code(v, codes) for v in _single_values(features, name)]
    if catalog.genres is not None:
        codes = {v: i + 2 for i, v in enumerate(catalog.vocabs["genre"])}
        genres = np.zeros((len(features), GENRE_SLOTS), np.int64)
        for r, gs in enumerate(features["genres"]):
            row = [codes.get(str(g), 1) if g is not None else 1 for g in list(gs if gs is not None else [])]
            genres[r, :len(row[:GENRE_SLOTS])] = row[:GENRE_SLOTS]
    return cats, genres


def grow_catalog(catalog: Catalog, n_items: int, features: pd.DataFrame, text: np.ndarray | None) -> Catalog:
    """The catalogue over ``n_items`` items: the model's rows as they were, and rows for
    ``features``' items (``item_idx`` at or past the model's ``n_items``); ``text``: their
    text vectors, by row of ``features`` (zero where an item has none)."""
    n_old = catalog.n_items
    rows = features["item_idx"].to_numpy(np.int64) + 1
    if len(rows) and (rows.min() <= n_old or rows.max() > n_items):
        raise ValueError(f"new items must have item_idx in [{n_old}, {n_items}); "
                         f"got {rows.min() - 1}..{rows.max() - 1}")

    def pad(a: np.ndarray, fill: Any = 0) -> np.ndarray:
        out = np.full((n_items + 1, *a.shape[1:]), fill, a.dtype)
        out[:len(a)] = a
        return out

    # log_q only weighs training's in-batch negatives; a new item had no training positive
    grown = replace(catalog, n_items=n_items, has_id=pad(catalog.has_id, False),
                    log_q=pad(catalog.log_q, float(catalog.log_q[1:].min()) if n_old else 0.0))
    cats, genres = category_codes(catalog, features)
    if catalog.cats is not None and cats is not None:
        grown.cats = pad(catalog.cats)
        grown.cats[rows] = cats
    if catalog.genres is not None and genres is not None:
        grown.genres = pad(catalog.genres)
        grown.genres[rows] = genres
    if catalog.text is not None:
        grown.text = pad(catalog.text)
        if text is not None:
            grown.text[rows] = text.astype(catalog.text.dtype)
    return grown


def grow_head(head: LinearHead, text: np.ndarray, new_rows: np.ndarray, ridge: float) -> LinearHead:
    """The head with factors predicted for ``new_rows`` beside its cold items, when it scores
    cold items at all (otherwise, like an uncovered training item, they are the towers' alone)."""
    if not head.scores_cold or head.factors is None or not len(new_rows):
        return head
    assert head.cold_rows is not None and head.cold_factors is not None
    factors = content_factors(text, head.rows, head.factors, new_rows, ridge)
    return replace(head, cold_rows=np.concatenate([head.cold_rows, new_rows]),
                   cold_factors=np.vstack([head.cold_factors, factors]).astype(np.float32))


def grow_model(loaded: LoadedModel, n_items: int, features: pd.DataFrame, text: np.ndarray | None,
               default_ridge: float) -> LoadedModel:
    """``loaded`` over a catalogue of ``n_items`` items (see the module docstring); the cached
    model it was loaded as is not changed. ``default_ridge``: the cold-factor ridge for models
    saved before it was recorded in their metadata."""
    if n_items <= loaded.spec.n_items:
        return loaded
    catalog = grow_catalog(loaded.catalog, n_items, features, text)
    spec = replace(loaded.spec, n_items=n_items)
    device = loaded.model.log_q.device
    model = build_model(spec, catalog, device)
    state = {}
    for name, tensor in loaded.model.state_dict().items():
        target = model.state_dict()[name]
        if tensor.shape != target.shape:  # item-indexed (the id embedding): the model's rows, then zeros
            padded = torch.zeros_like(target)
            padded[:tensor.shape[0]] = tensor
            tensor = padded
        state[name] = tensor
    model.load_state_dict(state, strict=True)
    head = loaded.head
    if head is not None and catalog.text is not None:
        ridge = float(loaded.meta.get("blend", {}).get("cold_ridge", default_ridge))
        head = grow_head(head, catalog.text, features["item_idx"].to_numpy(np.int64) + 1, ridge)
    meta = {**loaded.meta, "grown_items": n_items - loaded.spec.n_items, "trained_items": loaded.spec.n_items}
    return LoadedModel(model.eval(), catalog, spec, meta, head)
