"""What a model was fitted on, recorded with it and checked before it is served or judged.

Item and user indices are per lake: item 17 of one lake is another book in the next, so a
model from another lake (or from this lake before its item index changed) would write lists
of the wrong items, or of indices past the catalogue, and exit 0. Every model run therefore
carries, as MLflow tags:

- ``lake`` (root + namespace, absolute), ``lake_root`` and ``lake_namespace``;
- ``catalog_items`` (the item index's size: max ``item_idx`` + 1) and ``catalog_fingerprint``
  (a hash of every (item_idx, item_id) pair), with ``item_index_version``;
- ``data_versions``: the Delta version of each table the fit read (JSON).

:func:`check_run` refuses a run whose lake is not this one, or whose items are no longer at
the same indices here. Items added since the fit (new indices past ``catalog_items``) are
allowed: the model cannot rank them until it is retrained, which is logged.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from ..errors import ProvenanceError
from ..logs import get_logger, log_fields

if TYPE_CHECKING:
    from ..lake import Lake

log = get_logger("model.provenance")

LAKE, CATALOG_ITEMS, CATALOG_FINGERPRINT = "lake", "catalog_items", "catalog_fingerprint"
ITEM_INDEX_VERSION, DATA_VERSIONS = "item_index_version", "data_versions"


def lake_location(lake: Lake) -> str:
    """The namespace's absolute location (a path/URI, or ``catalog.namespace``): the ``lake`` tag."""
    if lake.catalog:
        return f"{lake.catalog}.{lake.namespace}"
    root = lake.root
    if "://" not in root and not root.startswith(("dbfs:", "file:")):
        root = os.path.abspath(root)
    return f"{root.rstrip('/')}/{lake.namespace}"


def catalogue(lake: Lake, below: int | None = None) -> tuple[int, int, str]:
    """(items, max item_idx + 1, fingerprint) of ``item_index``; items and fingerprint count
    only indices < ``below`` when given (the part a model fitted on ``below`` items knows).

    The fingerprint sums a 64-bit hash of each (item_idx, item_id) pair as a decimal, so it does
    not depend on row order or partitioning; one Spark aggregation computes all three."""
    inside = F.lit(True) if below is None else F.col("item_idx") < below
    pair_hash = F.xxhash64("item_idx", "item_id").cast("decimal(38,0)")
    row = lake.read("item_index").agg(
        F.count(F.when(inside, 1)).alias("n"), F.max("item_idx").alias("top"),
        F.sum(F.when(inside, pair_hash)).alias("h")).collect()[0]
    return int(row["n"]), int(row["top"] if row["top"] is not None else -1) + 1, str(row["h"] or 0)


def read_tables(split: str) -> list[str]:
    """The tables a model fitted on ``split`` reads (those that exist are versioned)."""
    tables = ["events", "item_index", "user_index", "item_features", "item_embeddings"]
    if split != "none":
        tables += [f"split_{split}", f"item_features_{split}", f"item_embeddings_{split}"]
    return tables


def data_provenance(lake: Lake, split: str) -> dict[str, str]:
    """The tags that say which data a fit read; take them before reading, so they name what was read."""
    versions = {t: lake.version(t) for t in read_tables(split) if lake.exists(t)}
    n, top, fingerprint = catalogue(lake)
    return {"lake_root": lake.root, "lake_namespace": lake.namespace, CATALOG_ITEMS: str(top),
            CATALOG_FINGERPRINT: fingerprint, ITEM_INDEX_VERSION: str(versions.get("item_index", -1)),
            "catalog_ids": str(n), DATA_VERSIONS: json.dumps(versions, sort_keys=True)}


def check_run(tags: dict[str, str], run_id: str, lake: Lake, key: str) -> None:
    """Refuses (ProvenanceError, one line) a run fitted on another lake or another catalogue.

    ``key`` is the setting that chose the run, named in the message so the user knows what to change.
    """
    here, there = lake_location(lake), tags.get(LAKE)
    if there != here:
        raise ProvenanceError(f"{key}: MLflow run {run_id} was fitted on lake {there!r}, not on this lake "
                              f"{here!r}; its item indices mean other items here: train or evaluate on this "
                              "lake, or name one of its runs")
    if CATALOG_FINGERPRINT not in tags:
        log_fields(log, "model run has no catalogue fingerprint (saved by an older sparkrec): not checked",
                   run_id=run_id)
        return
    bound = int(tags[CATALOG_ITEMS])
    n, top, fingerprint = catalogue(lake, bound)
    if fingerprint != tags[CATALOG_FINGERPRINT] or n != int(tags.get("catalog_ids", n)):
        raise ProvenanceError(
            f"{key}: MLflow run {run_id} was fitted on a catalogue of {bound} items (item_index version "
            f"{tags.get(ITEM_INDEX_VERSION)}) that this lake's item_index (version {lake.version('item_index')}) "
            "no longer has at the same indices: retrain (`sparkrec train`, or `sparkrec evaluate` for baselines)")
    if top > bound:
        log_fields(log, "items added since the model was fitted are not ranked until it is retrained",
                   run_id=run_id, model_items=bound, lake_items=top)
