"""Text embeddings for items and users, computed inside Spark and kept incrementally in Delta."""

from __future__ import annotations

from .assemble import TemplateError, item_text, parse_template, read_user_text, text_hash
from .embed import SyncStats, embed_splits, item_source, run_embed, sync_embeddings, user_source
from .embedding_tables import (
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_FEATURES_TABLE,
    USER_INDEX_TABLE,
    USER_TEXT_EMBEDDINGS,
    USER_TEXT_EMBEDDINGS_TABLE,
    item_embeddings_table,
    split_embeddings_table,
)
from .encoders import EncoderUnavailableError, TextEncoder, make_encoder

__all__ = ["ITEM_EMBEDDINGS", "ITEM_EMBEDDINGS_TABLE", "ITEM_FEATURES_TABLE", "USER_INDEX_TABLE",
           "USER_TEXT_EMBEDDINGS", "USER_TEXT_EMBEDDINGS_TABLE", "EncoderUnavailableError", "SyncStats",
           "TemplateError", "TextEncoder", "embed_splits", "item_embeddings_table", "item_source", "item_text",
           "make_encoder", "parse_template", "read_user_text", "run_embed", "split_embeddings_table",
           "sync_embeddings", "text_hash", "user_source"]
