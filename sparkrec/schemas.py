"""The platform's table contracts: every stage reads and writes these shapes.

Ingest produces the canonical ``interactions`` / ``items`` / ``users`` / ``tags`` tables keyed
by the source's own string ids; features map those ids to dense integer indices that models
use. Keeping both layers lets a new source plug in at ingest without touching any model.
"""

from __future__ import annotations

from pyspark.sql import types as T

from . import config

S, L, INT, D, F_, TS, B = (T.StringType(), T.LongType(), T.IntegerType(), T.DoubleType(),
                         T.FloatType(), T.TimestampType(), T.BooleanType())


def _struct(*fields: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(n, t, True) for n, t in fields])


# --------------------------------------------------------------------------- ingest (raw ids)
INTERACTIONS = _struct(("event_id", S), ("user_id", S), ("item_id", S), ("rating", D),
                       ("event_time", TS), ("source_file", S), ("source_line", L))
ITEMS = _struct(("item_id", S), ("title", S), ("description", S), ("authors", T.ArrayType(S)),
                ("genres", T.ArrayType(S)), ("publisher", S), ("year", INT),
                ("attributes", T.MapType(S, S)), ("source_file", S), ("source_line", L))
USERS = _struct(("user_id", S), ("location", S), ("age", INT), ("source_file", S), ("source_line", L))
TAGS = _struct(("tag_id", S), ("user_id", S), ("item_id", S), ("tag", S), ("event_time", TS),
               ("source_file", S), ("source_line", L))
QUARANTINE = _struct(("record_id", S), ("target_table", S), ("source_file", S), ("source_line", L),
                     ("reason", S), ("field", S), ("value", S), ("raw", S))

KEYS = {"interactions": ["event_id"], "items": ["item_id"], "users": ["user_id"],
        "tags": ["tag_id"], "quarantine": ["record_id"]}

# --------------------------------------------------------------------------- features (dense indices)
USER_INDEX = _struct(("user_id", S), ("user_idx", INT))
ITEM_INDEX = _struct(("item_id", S), ("item_idx", INT))
# seq orders a user's events: epoch seconds when the source has timestamps, else the
# position of the rating in the source file (Book-Crossing has no timestamps).
EVENTS = _struct(("user_idx", INT), ("item_idx", INT), ("rating", D), ("weight", D),
                 ("event_time", TS), ("seq", L), ("is_positive", B))
ITEM_FEATURES = _struct(("item_idx", INT), ("item_id", S), ("title", S), ("description", S),
                        ("authors", T.ArrayType(S)), ("genres", T.ArrayType(S)), ("publisher", S),
                        ("year", INT), ("top_tags", T.ArrayType(S)), ("attributes", T.MapType(S, S)),
                        ("n_interactions", L), ("n_users", L), ("mean_rating", D),
                        ("popularity_rank", INT), ("first_seq", L), ("last_seq", L))
USER_FEATURES = _struct(("user_idx", INT), ("user_id", S), ("n_interactions", L), ("n_positive", L),
                        ("mean_rating", D), ("first_seq", L), ("last_seq", L),
                        ("location", S), ("age", INT))
USER_HISTORIES = _struct(("user_idx", INT), ("item_idxs", T.ArrayType(INT)), ("seqs", T.ArrayType(L)),
                         ("weights", T.ArrayType(F_)))
# One table per split protocol (split_<name>); part is 'train' or 'test'.
SPLIT = _struct(("user_idx", INT), ("item_idx", INT), ("rating", D), ("weight", D), ("event_time", TS),
                ("seq", L), ("is_positive", B), ("part", S))

SPLIT_NAMES = config.SPLIT_NAMES  # one list: the config validates split names against it


# --------------------------------------------------------------------------- text
def _embeddings(idx: str, key: str) -> T.StructType:
    # idx null: the row's id is not (yet) in the dense index
    return _struct((idx, INT), (key, S), ("model", S), ("model_fingerprint", S), ("text_hash", S),
                   ("vector", T.ArrayType(F_)), ("dim", INT), ("updated_at", TS))


ITEM_EMBEDDINGS = _embeddings("item_idx", "item_id")
USER_TEXT_EMBEDDINGS = _embeddings("user_idx", "user_id")

# --------------------------------------------------------------------------- ingest bookkeeping
INGEST_RUNS = _struct(("run_id", S), ("run_at", TS), ("dataset", S), ("target_table", S), ("source", S),
                      ("read", L), ("accepted", L), ("quarantined", L), ("reasons", S), ("cleaned", S),
                      ("inserted", L), ("updated", L), ("unchanged", L), ("seconds", D))

# --------------------------------------------------------------------------- model outputs
ITEM_VECTORS = _struct(("item_idx", INT), ("vector", T.ArrayType(F_)), ("model_version", S))
EVIDENCE = _struct(("history_items", T.ArrayType(S)), ("shared_attributes", T.ArrayType(S)),
                   ("popularity_note", S))
# explanation_source: "llm" (the local model's sentence, accepted by the verifier) or
# "template". Tables written before the column existed read it as "template".
RECOMMENDATIONS = _struct(("user_idx", INT), ("user_id", S), ("rank", INT), ("item_idx", INT), ("item_id", S),
                          ("score", D), ("explanation", S), ("explanation_source", S), ("evidence", EVIDENCE),
                          ("model_version", S), ("generated_at", TS))
EVALUATION_METRICS = _struct(("eval_id", S), ("dataset", S), ("split", S), ("model", S), ("slice", S),
                             ("metric", S), ("k", INT), ("value", D), ("n_users", L), ("train_seconds", D),
                             ("model_version", S), ("evaluated_at", TS))

# --------------------------------------------------------------------------- streaming
STREAM_BATCHES = _struct(("app_id", S), ("batch_id", L), ("files", INT), ("read", L), ("accepted", L),
                         ("quarantined", L), ("reasons", S), ("users_refreshed", L), ("seconds", D),
                         ("lag_seconds", D), ("committed_at", TS))
STREAM_PREQUENTIAL = _struct(("app_id", S), ("batch_id", L), ("event_id", S), ("user_id", S), ("item_id", S),
                             ("event_time", TS), ("rank_live", INT), ("rank_frozen", INT),
                             ("frozen_version", L), ("arrived_at", TS))
