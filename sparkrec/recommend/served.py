"""The served hybrid over the lake's current catalogue: the trained model, grown by the items
added since it was trained (:mod:`sparkrec.model.grow`), so a new item is recommendable as soon
as the features and embed stages (or the stream's catalogue source) have put it in the lake.

One small Spark query reads the new items' rows (``item_idx`` past the model's own); with none,
the trained model is served as loaded.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from ..config import Config
from ..lake import Lake
from ..logs import get_logger, log_fields
from ..model.grow import FEATURE_COLUMNS, grow_model
from ..model.registry import LoadedModel, load_model
from ..text.embedding_tables import ITEM_EMBEDDINGS_TABLE, ITEM_FEATURES_TABLE

log = get_logger("recommend")


def load_served(cfg: Config, lake: Lake, run_id: str) -> LoadedModel:
    """The hybrid of ``run_id`` over every item ``item_features`` holds."""
    loaded = load_model(run_id, cfg.train.mlflow_uri)
    trained = loaded.spec.n_items
    if not lake.exists(ITEM_FEATURES_TABLE):
        return loaded
    new = lake.read(ITEM_FEATURES_TABLE).filter(F.col("item_idx") >= trained).select(*FEATURE_COLUMNS)
    if loaded.catalog.text is not None and lake.exists(ITEM_EMBEDDINGS_TABLE):
        vectors = lake.read(ITEM_EMBEDDINGS_TABLE).select("item_idx", "vector")
        new = new.join(vectors, "item_idx", "left")
    features = new.orderBy("item_idx").toPandas()  # the items added since training: few by nature
    if features.empty:
        return loaded
    text = None
    if "vector" in features:
        dim = loaded.catalog.text.shape[1]  # type: ignore[union-attr]  # checked above
        text = np.zeros((len(features), dim), np.float32)
        for r, v in enumerate(features["vector"]):
            if v is not None and len(v) == dim:
                text[r] = v
    n_items = int(features["item_idx"].max()) + 1
    grown = grow_model(loaded, n_items, features, text, cfg.model.cold_factor_ridge)
    log_fields(log, "served model grown by the items added since training", run_id=run_id, trained_items=trained,
               new_items=len(features), with_text=int(np.any(text != 0, axis=1).sum()) if text is not None else 0)
    return grown
