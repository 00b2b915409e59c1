"""Contracts of the embedding tables, and the tables the embed stage reads.

One row per item (per user) holding the vector and what produced it: ``model`` and
``model_fingerprint`` say which encoder, ``text_hash`` which input text, so the next run can
tell, without embedding anything, which rows are still valid. ``updated_at`` is when the row
last changed (re-embedded, or its dense index remapped); rows left valid keep theirs.
"""

from __future__ import annotations

from .. import schemas
from ..lake.base import Lake, LakeError

ITEM_FEATURES_TABLE = "item_features"
USER_INDEX_TABLE = "user_index"
ITEM_EMBEDDINGS_TABLE = "item_embeddings"
USER_TEXT_EMBEDDINGS_TABLE = "user_text_embeddings"


def split_embeddings_table(split: str) -> str:
    """Where the embed stage writes the vectors of ``item_features_<split>``'s (leak-free) text."""
    return f"{ITEM_EMBEDDINGS_TABLE}_{split}"


def item_embeddings_table(lake: Lake, split: str | None) -> str:
    """The item-embedding table a model fitted on ``split`` must read.

    ``None`` / ``"none"`` (production, all data): ``item_embeddings``. An evaluation split:
    ``item_embeddings_<split>``, whose text holds no tag or statistic from the split's test
    part. Never falls back to ``item_embeddings`` (that would leak the test part into the text):
    a missing table is an error naming the command that builds it.
    """
    if split in (None, "none"):
        return ITEM_EMBEDDINGS_TABLE
    table = split_embeddings_table(split)
    if not lake.exists(table):
        raise LakeError(f"no table {table!r} (leak-free item text embeddings for split {split!r}) at "
                        f"{lake.location(table)}: run `sparkrec features`, then `sparkrec embed "
                        f"embed.splits=[{split}]` (or add {split!r} to embed.splits)")
    return table


ITEM_EMBEDDINGS = schemas.ITEM_EMBEDDINGS
USER_TEXT_EMBEDDINGS = schemas.USER_TEXT_EMBEDDINGS
