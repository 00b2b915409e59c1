"""A micro-batch's catalogue rows (``stream.items_path``): validated, MERGEd, indexed, described
and embedded, so the items they add are recommendable from the batch that brings them on.

Each step is the batch stage that owns it, on just these rows: ingest's items reader, rules
and MERGE (the same reasons, line numbers and quarantine keys as ``sparkrec ingest``); the
features stage's stable index (new ids numbered after the maximum) and an ``item_features`` row
(catalogue columns from the new row, statistics as the table holds them); the embed stage's
sync (a text already embedded by the same model is not embedded again; nothing is removed).
The served hybrid then grows by the new items (:mod:`sparkrec.recommend.served`): the item
tower encodes them from their text and fields, as it does the training catalogue's cold items.

The batch's events are validated after this, against the catalogue with its new items, so an
event may name an item that arrives in the same batch. These commits carry their own
application transaction (the query's id + ``/catalogue``), so a replayed batch skips them as it
skips the events' commits, and their quarantine rows are committed apart from the events'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from .. import schemas
from ..config import Config
from ..features.builders import catalogue_update
from ..features.indexing import extend_index
from ..ingest.canonical import validate_items
from ..ingest.job import TableReport, _write
from ..ingest.presets import resolve_source
from ..ingest.provenance import keep_first_provenance
from ..ingest.reader import read_input
from ..ingest.validate import Validated
from ..lake import Lake
from ..logs import get_logger, log_fields
from ..text.embed import item_source, sync_embeddings
from ..text.embedding_tables import ITEM_EMBEDDINGS, ITEM_EMBEDDINGS_TABLE, ITEM_FEATURES_TABLE
from ..text.encoders import TextEncoder, make_encoder
from .once import BatchTxn, timed_write
from .unreadable import persisted, quarantine_rows, read_counted

log = get_logger("stream.catalogue")

# the tables a batch's catalogue rows are committed to, in order
TABLES = ("quarantine", "items", ITEM_FEATURES_TABLE, ITEM_EMBEDDINGS_TABLE)

# The text encoder, loaded once per process and embed settings: a catalogue batch embeds a
# handful of texts, and loading the model costs more than that.
_ENCODERS: dict[str, TextEncoder] = {}


@dataclass
class CatalogueReport:
    """What one batch did with its catalogue files: the counts add up as ingest's do
    (read = accepted + quarantined), ``new`` of the accepted were not in the index before."""

    files: int
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    new: int = 0
    embedded: int = 0
    skipped: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)


def catalogue_txn(txn: BatchTxn) -> BatchTxn:
    return BatchTxn(f"{txn.app_id}/catalogue", txn.batch_id)


def encoder_for(cfg: Config, spark: SparkSession) -> TextEncoder:
    key = cfg.embed.model_dump_json()
    if key not in _ENCODERS:
        _ENCODERS.clear()
        _ENCODERS[key] = make_encoder(cfg.embed, spark)
    return _ENCODERS[key]


def fold_in_items(cfg: Config, spark: SparkSession, lake: Lake, files: list[str], txn: BatchTxn) -> CatalogueReport:
    """The catalogue rows in ``files`` into ``items``, ``item_index``, ``item_features`` and
    ``item_embeddings``; ``txn``: the batch's (its catalogue transaction is derived from it)."""
    src = resolve_source(cfg.data)
    assert src.items is not None  # the query refuses stream.items_path without an items input
    spec = src.items
    txn = catalogue_txn(txn)
    started = time.perf_counter()
    report = CatalogueReport(len(files))

    def read(paths: list[str]) -> tuple[Validated, TableReport]:
        raw = read_input(spark, paths, spec.format, spec.csv)  # type: ignore[arg-type]  # Spark takes lists
        return persisted(validate_items(raw, src, cfg.ingest), f"{len(paths)} catalogue files from {paths[0]}")

    v, counts, unreadable = read_counted(files, "items", read)
    report.read, report.accepted, report.quarantined = counts.read, counts.accepted, counts.quarantined
    report.reasons = counts.reasons
    report.steps["catalogue read"] = round(time.perf_counter() - started, 3)

    def commit(table: str, write: Callable[[Lake], Any]) -> None:
        timed_write(txn, lake, table, report, write, f"catalogue {table}")

    try:
        rejected = [quarantine_rows(spark, unreadable, "items")] if unreadable else []
        if v is not None and counts.quarantined > len(unreadable):
            rejected.append(v.quarantine())
        if rejected:
            rows = rejected[0]
            for more in rejected[1:]:
                rows = rows.unionByName(more)
            keys = schemas.KEYS["quarantine"]
            commit("quarantine", lambda lk: lk.upsert("quarantine", keep_first_provenance(lk, "quarantine", rows, keys),
                                                      keys))
        if v is not None and counts.accepted:
            commit("items", lambda lk: _write(lk, v, counts, cfg.data.dataset, started))
            _describe_and_embed(cfg, spark, lake, v, report, commit)
    finally:
        if v is not None:
            v.rows.unpersist()
    log_fields(log, "catalogue rows folded in", **{k: val for k, val in report.__dict__.items()})
    return report


def _describe_and_embed(cfg: Config, spark: SparkSession, lake: Lake, v: Validated, report: CatalogueReport,
                        commit: Callable[[str, Callable[[Lake], Any]], None]) -> None:
    """Index, ``item_features`` rows and text vectors for the batch's accepted items."""
    ids = v.accepted().select("item_id").distinct()
    before = lake.read("item_index").join(ids, "item_id").count() if lake.exists("item_index") else 0
    extend_index(lake, "item_index", ids, "item_id", "item_idx")  # idempotent: only new ids
    report.new = ids.count() - before
    if not lake.exists(ITEM_FEATURES_TABLE):
        return  # no features run yet: the features stage describes (and embed embeds) them first
    index = lake.read("item_index").join(ids, "item_id")
    items = lake.read("items").join(ids, "item_id")
    commit(ITEM_FEATURES_TABLE, lambda lk: lk.upsert(
        ITEM_FEATURES_TABLE, catalogue_update(items, index, lk.read(ITEM_FEATURES_TABLE)), ["item_idx"]))
    if not lake.exists(ITEM_EMBEDDINGS_TABLE):
        return  # the lake serves no text vectors (embed never ran): the items go without

    def embed(lk: Lake) -> None:
        source = item_source(lk, cfg.embed.item_template).join(ids, "item_id")
        stats = sync_embeddings(lk, ITEM_EMBEDDINGS_TABLE, source, "item_id", "item_idx", encoder_for(cfg, spark),
                                ITEM_EMBEDDINGS, 1, cfg.embed.batch_size, complete=False)
        report.embedded = stats.embedded

    commit(ITEM_EMBEDDINGS_TABLE, embed)
