"""Contracts of the embedding tables, and the tables the embed stage reads.

One row per item (per user) holding the vector and what produced it: ``model`` and
``model_fingerprint`` say which encoder, ``text_hash`` which input text, so the next run can
tell, without embedding anything, which rows are still valid. ``updated_at`` is when the row
last changed (re-embedded, or its dense index remapped); rows left valid keep theirs.
"""

from __future__ import annotations

from pyspark.sql import types as T

ITEM_FEATURES_TABLE = "item_features"
USER_INDEX_TABLE = "user_index"
ITEM_EMBEDDINGS_TABLE = "item_embeddings"
USER_TEXT_EMBEDDINGS_TABLE = "user_text_embeddings"


def _embedding_schema(idx: str, key: str) -> T.StructType:
    return T.StructType([
        T.StructField(idx, T.IntegerType(), True),  # null: not (yet) in the dense index
        T.StructField(key, T.StringType(), True),
        T.StructField("model", T.StringType(), True),
        T.StructField("model_fingerprint", T.StringType(), True),
        T.StructField("text_hash", T.StringType(), True),
        T.StructField("vector", T.ArrayType(T.FloatType()), True),
        T.StructField("dim", T.IntegerType(), True),
        T.StructField("updated_at", T.TimestampType(), True),
    ])


ITEM_EMBEDDINGS = _embedding_schema("item_idx", "item_id")
USER_TEXT_EMBEDDINGS = _embedding_schema("user_idx", "user_id")
