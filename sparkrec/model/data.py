"""Training data for the two-tower model, built in Spark from the feature tables.

Examples are (user, the user's previous N positive items and their time gaps, target item,
weight), one per positive training event. The history comes from a sliding window frame
over the user's events, so no row ever carries a user's whole sequence.

Gaps are measured to the user's latest history event, not to the target: at serving time
the next event's time is unknown, and training must see what serving sees.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from ..features.builders import last_n
from ..features.events import has_timestamps
from ..features.splits import unit_hash

SECONDS_PER_DAY = 86_400.0
GENRE_SLOTS = 4


def _history_columns(h: Column, n: int, gap_scale: float, last: Column | None = None) -> dict[str, Column]:
    """From an array of struct(seq, item_idx) (oldest first, at most n) to left-padded
    model inputs: item ids + 1 (0 = padding) and log-scaled gaps to the latest event (by
    default the history's own last one)."""
    last = F.element_at(h, -1)["seq"] if last is None else last
    items = F.transform(h, lambda x: (x["item_idx"] + 1).cast("int"))
    gaps = F.transform(h, lambda x: F.log1p(F.greatest(last - x["seq"], F.lit(0)) / F.lit(gap_scale)).cast("float"))
    pad = F.lit(n) - F.size(h)
    return {"hist": F.concat(F.array_repeat(F.lit(0), pad), items),
            "gaps": F.concat(F.array_repeat(F.lit(0.0).cast("float"), pad), gaps)}


def gap_scale_for(events: DataFrame) -> float:
    """Days when the source has timestamps; otherwise seq is a position and a step is 1."""
    return SECONDS_PER_DAY if has_timestamps(events) else 1.0


def training_examples(positives: DataFrame, n: int, gap_scale: float, masked_share: float = 0.0,
                      seed: int = 42) -> DataFrame:
    """One row per positive event, of one of two kinds (a seeded hash of the event picks):

    * next-item: the n events before it (by seq) are its history, as a sequence model trains;
    * masked (a ``masked_share`` of events): the target is taken out of the user's whole set and
      up to n of the user's *other* positives, drawn at random from all of them and laid out
      in time order with their gaps to the latest event, are its history. This is the denoising
      / masked-item objective (Mult-DAE, BERT4Rec's cloze): it teaches the user tower to complete
      a set from any part of it, which is the task when test items are a random share of a
      user's history, or when a source has no time at all.

    The masked draw is one seeded shuffle per user: an event's history is the n events after it
    in that shuffle, wrapping round to the shuffle's start. Each history is still a uniform
    random subset of the others and every event is drawn equally often, and each row reads a
    bounded window frame plus the user's first n shuffled events, so the cost is linear in a
    user's events: drawing from the whole set per row was quadratic, and took 16 of the 26
    minutes spent on full Book-Crossing before training began.
    """
    order = Window.partitionBy("user_idx").orderBy("seq", "item_idx")
    previous = F.collect_list(F.struct("seq", "item_idx")).over(order.rowsBetween(-n, -1))
    if masked_share <= 0:
        cols = _history_columns(F.col("h"), n, gap_scale)
        rows = positives.withColumn("h", previous)
    else:
        rows = _with_drawn_sets(positives, n, seed)
        last = F.when(F.col("_masked"), F.col("_newest")).otherwise(F.element_at("h", -1)["seq"])
        cols = _history_columns(F.col("h"), n, gap_scale, last)
        is_masked = unit_hash(seed, "user_idx", "item_idx", "seq") < F.lit(masked_share)
        rows = (rows.withColumn("_masked", is_masked)
                .withColumn("h", F.when(F.col("_masked"), F.col("_drawn")).otherwise(previous)))
    return rows.select((F.col("user_idx") + 1).cast("int").alias("user"), cols["hist"].alias("hist"),
                       cols["gaps"].alias("gaps"), (F.col("item_idx") + 1).cast("int").alias("target"),
                       F.col("weight").cast("float").alias("weight"))


def _with_drawn_sets(positives: DataFrame, n: int, seed: int) -> DataFrame:
    """Adds ``_drawn`` (up to n of the user's other events, in time order: the n after this one
    in a seeded per-user shuffle, cyclically) and ``_newest`` (the user's latest seq)."""
    key = F.xxhash64(F.lit(seed), "user_idx", "item_idx", "seq")
    shuffled = Window.partitionBy("user_idx").orderBy(key, "seq", "item_idx")
    event = F.struct("seq", "item_idx")
    head = (positives.groupBy("user_idx")
            .agg(F.slice(F.array_sort(F.collect_list(F.struct(key.alias("k"), "seq", "item_idx"))), 1, n)
                 .alias("_head"), F.count("*").alias("_m"), F.max("seq").alias("_newest")))
    after = F.collect_list(event).over(shuffled.rowsBetween(1, n))
    before = F.collect_list(event).over(shuffled.rowsBetween(-n, -1))
    head_events = F.transform("_head", lambda x: F.struct(x["seq"].alias("seq"), x["item_idx"].alias("item_idx")))
    # a set of at most n + 1 lies inside the two frames; a larger one wraps round to its first
    # events, which stop short of this row (it is within n of the end, and n < m - 1)
    cyclic = F.when(F.col("_m") <= n + 1, F.concat("_after", F.reverse(before))).otherwise(
        F.concat("_after", F.slice(head_events, 1, F.lit(n) - F.size("_after"))))
    # the target's own item may recur (a re-rated item): never part of its history
    others = F.filter(cyclic, lambda x: x["item_idx"] != F.col("item_idx"))
    return (positives.join(head, "user_idx").withColumn("_after", after)
            .withColumn("_drawn", F.array_sort(F.slice(others, 1, n))))  # time order: recency is a feature


def tower_inputs(positives: DataFrame, n: int, gap_scale: float) -> DataFrame:
    """Each user's current model input: their last n positive events for the towers, and every
    positive item with its weight (model rows; a re-rated item once, at its largest weight)
    for the linear head, which reads the whole history."""
    agg = positives.groupBy("user_idx").agg(F.sort_array(F.collect_list(F.struct("seq", "item_idx"))).alias("h"))
    agg = agg.withColumn("h", last_n(F.col("h"), n))
    cols = _history_columns(F.col("h"), n, gap_scale)
    pairs = (positives.groupBy("user_idx", "item_idx").agg(F.max("weight").alias("w"))
             .groupBy("user_idx").agg(F.collect_list(F.struct((F.col("item_idx") + 1).cast("int").alias("i"),
                                                             F.col("w").cast("float").alias("w"))).alias("p")))
    return agg.join(pairs, "user_idx").select("user_idx", cols["hist"].alias("hist"), cols["gaps"].alias("gaps"),
                                              F.col("p.i").alias("items"), F.col("p.w").alias("weights"))


# --------------------------------------------------------------------------- catalogue
@dataclass
class Catalog:
    """Per-item model inputs, row i+1 for item_idx i (row 0 is padding)."""

    n_items: int
    n_users: int
    has_id: np.ndarray
    log_q: np.ndarray
    text: np.ndarray | None = None
    cats: np.ndarray | None = None
    genres: np.ndarray | None = None
    vocabs: dict[str, list[str]] = field(default_factory=dict)  # code 2.. -> value (0 pad, 1 other)
    cat_fields: list[str] = field(default_factory=list)

    @property
    def cat_vocab_sizes(self) -> list[int]:
        return [len(self.vocabs[f]) + 2 for f in self.cat_fields]

    @property
    def genre_vocab(self) -> int:
        return len(self.vocabs["genre"]) + 2 if self.genres is not None else 0

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        tensors = {"has_id": self.has_id.astype(np.uint8), "log_q": self.log_q.astype(np.float32)}
        for name in ("text", "cats", "genres"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value
        meta = {"n_items": str(self.n_items), "n_users": str(self.n_users),
                "vocabs": json.dumps(self.vocabs), "cat_fields": json.dumps(self.cat_fields)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata()
            t = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118  (safe_open has no __iter__)
        return cls(int(meta["n_items"]), int(meta["n_users"]), t["has_id"].astype(bool), t["log_q"],
                   t.get("text"), t.get("cats"), t.get("genres"), json.loads(meta["vocabs"]),
                   json.loads(meta["cat_fields"]))


def _vocab(values: DataFrame, limit: int, min_count: int = 1) -> list[str]:
    """Most frequent values first; bounded by ``limit``, so it is small by construction."""
    counts = values.where(F.col("v").isNotNull() & (F.col("v") != "")).groupBy("v").count()
    counts = counts.where(F.col("count") >= min_count) if min_count > 1 else counts
    return [r["v"] for r in counts.orderBy(F.desc("count"), "v").limit(limit).collect()]


def _codes(col: Column, vocab: list[str]) -> Column:
    mapping = F.create_map(*[x for i, v in enumerate(vocab) for x in (F.lit(v), F.lit(i + 2))]) if vocab else None
    if mapping is None:
        return F.when(col.isNull(), F.lit(0)).otherwise(F.lit(1))
    return F.when(col.isNull() | (col == ""), F.lit(0)).otherwise(F.coalesce(mapping[col], F.lit(1)))


def build_catalog(item_features: DataFrame, train_positives: DataFrame, n_users: int,
                  text: DataFrame | None, cat_vocab: int, use_categories: bool,
                  attribute_fields: Sequence[str] = ()) -> Catalog:
    """Collects one row per item to the driver: the catalogue is what every trainer and
    scorer needs in memory anyway (bounded by the catalogue size, not by the events).

    ``attribute_fields`` are a generic source's ``categorical_fields`` (kept in the items'
    ``attributes``): each becomes one more single-valued field of the item tower and of the
    head's side information. Only their values that two or more items share enter the
    vocabulary, so a field that is unique per item (an image URL) adds nothing and is left out.
    """
    n_items = int(item_features.agg(F.max("item_idx")).collect()[0][0]) + 1
    singles = {"author": F.element_at("authors", 1), "publisher": F.col("publisher"),
               "year": (F.floor(F.col("year") / 5) * 5).cast("string")}
    attributes = {f"attr:{name}": F.col("attributes").getItem(name) for name in attribute_fields}
    singles.update(attributes)
    feats = item_features.select("item_idx", *[c.alias(n) for n, c in singles.items()], "genres")
    vocabs: dict[str, list[str]] = {}
    cat_fields: list[str] = []
    has_genres = False
    if use_categories:
        for name in singles:
            vocab = _vocab(feats.select(F.col(f"`{name}`").alias("v")), cat_vocab, 2 if name in attributes else 1)
            if vocab:
                vocabs[name] = vocab
                cat_fields.append(name)
        genre_vocab = _vocab(feats.select(F.explode_outer("genres").alias("v")), cat_vocab)
        if genre_vocab:
            vocabs["genre"], has_genres = genre_vocab, True
    freq = train_positives.groupBy("item_idx").agg(F.count(F.lit(1)).alias("freq"))
    cols = [F.col("item_idx"), F.coalesce("freq", F.lit(0)).alias("freq")]
    cols += [F.array(*[_codes(F.col(f"`{f}`"), vocabs[f]) for f in cat_fields]).alias("cats")] if cat_fields else []
    if has_genres:
        genre_map = F.create_map(*[x for i, v in enumerate(vocabs["genre"]) for x in (F.lit(v), F.lit(i + 2))])
        codes = F.transform(F.slice(F.coalesce("genres", F.array().cast("array<string>")), 1, GENRE_SLOTS),
                            lambda g: F.coalesce(genre_map[g], F.lit(1)))
        cols.append(F.concat(codes, F.array_repeat(F.lit(0), F.lit(GENRE_SLOTS) - F.size(codes))).alias("genres"))
    rows = feats.join(freq, "item_idx", "left")
    if text is not None:
        rows = rows.join(text.select("item_idx", F.col("vector").alias("text")), "item_idx", "left")
        cols.append(F.col("text"))
    pdf = rows.select(*cols).toPandas()
    idx = pdf["item_idx"].to_numpy() + 1
    has_id = np.zeros(n_items + 1, dtype=bool)
    has_id[idx] = pdf["freq"].to_numpy() > 0
    freq_arr = np.zeros(n_items + 1, dtype=np.float64)
    freq_arr[idx] = pdf["freq"].to_numpy()
    log_q = np.log(np.maximum(freq_arr, 1.0) / max(freq_arr.sum(), 1.0)).astype(np.float32)
    catalog = Catalog(n_items, n_users, has_id, log_q, vocabs=vocabs, cat_fields=cat_fields)
    if cat_fields:
        catalog.cats = np.zeros((n_items + 1, len(cat_fields)), dtype=np.int64)
        catalog.cats[idx] = np.stack(pdf["cats"].to_numpy())
    if has_genres:
        catalog.genres = np.zeros((n_items + 1, GENRE_SLOTS), dtype=np.int64)
        catalog.genres[idx] = np.stack(pdf["genres"].to_numpy())
    if text is not None:
        present = pdf["text"].notna().to_numpy()
        if present.any():
            dim = len(pdf["text"][present].iloc[0])
            catalog.text = np.zeros((n_items + 1, dim), dtype=np.float16)
            catalog.text[idx[present]] = np.stack(pdf["text"][present].to_numpy()).astype(np.float16)
    return catalog
