"""A small micro-batch folded in by this process with Arrow and delta-rs instead of Spark jobs.

Why: a micro-batch of a few hundred events spent 7-9 s in ~30 small Spark queries, 7.4 s of
8.6 s of it in the Python driver waiting on the JVM (profiled on ml-latest-small, 250-event
batches): each query's planning and scheduling, not its rows, and that is what kept the
stream's end-to-end latency at ~16 s. Past validation the rows of such a batch fit in this
process many times over, so here the batch is collected once (reading and validating the
files stays ingest's own Spark code, so reasons, line numbers and quarantine keys are
unchanged) and every later step is done on Arrow tables and committed by delta-rs:

- the rejected rows' quarantine keys (``to_quarantine``) and both MERGEs, quarantine and
  interactions, with the first provenance carried over (``keep_first_provenance``);
- new user / item indices after the table's maximum (``extend_index``);
- the events MERGE (``build_events``), the affected users' histories (``user_histories``);
- ranks at arrival (``prequential.arrivals``);
- the affected users rescored with the served hybrid, kept loaded across batches, and their
  explained lists MERGEd (``run_recommend`` for given users: ``current_states``, ``score_batch``,
  the serving explanation renderer that tests hold equal to ``explain``);
- the metrics row.

Each step names the Spark step it mirrors; ``tests/test_stream_driver.py`` runs the same files
through both paths and compares every table they write. Big batches (``stream.driver_rows``),
a served baseline,
LLM explanations and users known only by interest text stay on the Spark path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from .. import schemas
from ..arrowframes import collect_arrow, to_dataframe
from ..config import Config, GenericSource, WeightConfig
from ..ingest.job import TableReport, counted, recorded
from ..ingest.provenance import PROVENANCE
from ..ingest.reader import FILE, FILE_TIME, LINE, RAW
from ..ingest.validate import FIELD, REASON, VALUE, Membership, Validated
from ..lake import NO_TABLE, CommitResult, Lake
from ..lake.arrowmerge import column_equal
from ..logs import get_logger
from . import prequential

log = get_logger("stream.driver")

_CLEANED = "__cleaned_"


# --------------------------------------------------------------------------- read
@dataclass
class Collected(Validated):
    """A validated batch collected once: ``arrow`` holds ``rows`` (REASON null = accepted)."""

    arrow: pa.Table | None = None

    def accepted_arrow(self) -> pa.Table:
        assert self.arrow is not None
        return self.arrow.filter(pc.is_null(self.arrow.column(REASON))).select(self.output_columns)

    def quarantine(self) -> DataFrame:
        """Spark's own rejected-row keys, over the collected rows (a dirty batch only)."""
        assert self.arrow is not None
        local = Validated(self.table, to_dataframe(self.rows.sparkSession, self.arrow.drop(
            [c for c in self.arrow.column_names if c.startswith(_CLEANED)]), self.rows.schema), self.output_columns)
        return local.quarantine()


def collect(v: Validated, source: str) -> tuple[Collected, TableReport]:
    """One Spark job: the files read, validated and brought here; ingest's ``_summarise``
    counts taken from the rows."""
    flags = {f"{_CLEANED}{k}": c.cast("int") for k, c in v.cleaned.items()}
    arrow = collect_arrow(v.rows.withColumns(flags))
    reason = arrow.column(REASON)
    ok = pc.is_null(reason)
    accepted = int(pc.sum(ok).as_py() or 0)
    reasons = {r["values"]: int(r["counts"]) for r in pc.value_counts(pc.drop_null(reason)).to_pylist()}
    cleaned = {k: int(pc.sum(arrow.column(f"{_CLEANED}{k}").filter(ok)).as_py() or 0) for k in v.cleaned}
    read = accepted + sum(reasons.values())
    report = TableReport(v.table, source, read, accepted, read - accepted, reasons, cleaned)
    return Collected(v.table, v.rows, v.output_columns, v.cleaned, arrow), report


class KnownItems:
    """The catalogue's item ids as a set the executors hold, for a small batch's unknown-item
    rule (``reject_unknown_items``): a lookup per row instead of a join against every item.
    Why: on Book-Crossing's 271k items the join was a third of a 100-event batch's validation
    (~0.35 s of ~1.3 s, measured with interpreted SQL as the query runs). The set is broadcast
    once and rebuilt only when ``items`` gets a new version (the stream's catalogue rows); a
    catalogue of more than ``max_ids`` items keeps the join, whose cost does not sit in the
    driver's memory."""

    def __init__(self, max_ids: int = 1_000_000) -> None:
        self.max_ids = max_ids
        self._version: int | None = None
        self._test: Membership | None = None
        self._broadcast: Any = None

    def __call__(self, spark: SparkSession, lake: Lake) -> Membership | None:
        """The membership test for ``validate_interactions``' ``known_items``; None: no ``items``
        table, or one over ``max_ids`` (the caller joins it)."""
        if not lake.exists("items"):
            return None
        version = lake.version("items")
        if version != self._version:
            self._release()
            if lake.read("items").count() <= self.max_ids:
                ids = lake.read_arrow("items", ["item_id"]).column("item_id")
                self._broadcast = spark.sparkContext.broadcast(frozenset(ids.to_pylist()))
                self._test = _member_of(self._broadcast)
            self._version = version
        return self._test

    def _release(self) -> None:
        if self._broadcast is not None:
            self._broadcast.unpersist()
        self._broadcast, self._test = None, None


def _member_of(ids: Any) -> Membership:
    """A vectorised UDF: whether each id is in the broadcast set ``ids`` (null: not known,
    as the join would say)."""
    @F.pandas_udf(T.BooleanType())
    def known(values: pd.Series) -> pd.Series:
        held = ids.value
        return pd.Series([v in held for v in values], index=values.index, dtype=bool)

    return known


def landed(c: Collected) -> dt.datetime | None:
    assert c.arrow is not None
    return pc.min(c.arrow.column(FILE_TIME)).as_py() if c.arrow.num_rows else None


# --------------------------------------------------------------------------- interactions
def carry_provenance(source: pa.Table, existing: pa.Table, keys: list[str]) -> pa.Table:
    """``keep_first_provenance`` on Arrow: a row whose key and content the table already holds
    takes the table's (file, line)."""
    if existing.num_rows == 0:
        return source
    content = [c for c in source.column_names if c not in keys and c not in PROVENANCE]
    pos, old = "__src_row", "__old_"
    left = source.append_column(pos, pa.array(np.arange(source.num_rows)))
    right = existing.select([*keys, *content, *PROVENANCE]).rename_columns(
        [*keys, *[f"{old}{c}" for c in content], *[f"{old}{c}" for c in PROVENANCE]])
    matched = left.join(right, keys, join_type="inner")
    same = np.ones(matched.num_rows, dtype=bool)
    for c in content:
        same &= column_equal(matched.column(c), matched.column(f"{old}{c}"))
    rows = matched.column(pos).to_numpy()[same]
    if not len(rows):
        return source
    for c in PROVENANCE:
        values = source.column(c).to_numpy(zero_copy_only=False).copy()
        values[rows] = matched.column(f"{old}{c}").to_numpy(zero_copy_only=False)[same]
        source = source.set_column(source.schema.get_field_index(c), c, pa.array(values, source.schema.field(c).type))
    return source


def write_interactions(lake: Lake, c: Collected, report: TableReport, dataset: str, started: float) -> None:
    """ingest's ``_write`` for the collected rows."""
    recorded(report, _upsert_first_provenance(counted(lake, report, dataset, started), c.table,
                                              c.accepted_arrow(), schemas.INTERACTIONS))


def write_quarantine(lake: Lake, c: Collected) -> CommitResult:
    """The batch's rejected rows MERGEd into ``quarantine`` as the Spark path does it
    (``to_quarantine`` keys, ``keep_first_provenance``), without a Spark job: ~1.3 s of a
    Book-Crossing batch, most of whose batches hold a rating of a book the catalogue lacks."""
    assert c.arrow is not None
    rows = c.arrow.filter(pc.is_valid(c.arrow.column(REASON)))
    rows = rows.sort_by([(FILE, "ascending"), (RAW, "ascending"), (REASON, "ascending"), (LINE, "ascending")])
    ids, previous, copy = [], None, 0
    for record in zip(*(rows.column(col).to_pylist() for col in (FILE, RAW, REASON)), strict=True):
        copy = copy + 1 if record == previous else 1  # which copy of an identical rejected record
        previous = record
        parts = ("\x00" if part is None else str(part) for part in (c.table, *record, copy))
        ids.append(hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest())  # ingest's stable_id
    out = pa.table({"record_id": ids, "target_table": [c.table] * rows.num_rows, "source_file": rows.column(FILE),
                    "source_line": rows.column(LINE), "reason": rows.column(REASON), "field": rows.column(FIELD),
                    "value": rows.column(VALUE), "raw": rows.column(RAW)})
    return _upsert_first_provenance(lake, "quarantine", out, schemas.QUARANTINE)


def _upsert_first_provenance(lake: Lake, table: str, source: pa.Table, schema: Any) -> CommitResult:
    keys = schemas.KEYS[table]
    if lake.exists(table):
        source = carry_provenance(source, lake.read_arrow(table, where={k: source.column(k) for k in keys}), keys)
    return lake.upsert_arrow(table, source, keys, schema=schema)


# --------------------------------------------------------------------------- indices, events
def extend_index(lake: Lake, table: str, ids: pa.ChunkedArray, id_col: str, idx_col: str) -> CommitResult | None:
    """``features.indexing.extend_index``: ids not yet in ``table`` numbered after its maximum
    in id order, committed on the version they were numbered from; None when none is new."""
    ids = pc.unique(pc.drop_null(ids))
    schema = schemas.USER_INDEX if table == "user_index" else schemas.ITEM_INDEX

    def write(read_version: int) -> CommitResult | None:
        if read_version == NO_TABLE:
            offset, new = -1, ids
        else:
            existing = lake.read_arrow(table, [id_col, idx_col], version=read_version)
            top = pc.max(existing.column(idx_col)).as_py()
            offset = -1 if top is None else int(top)
            new = ids.filter(pc.invert(pc.is_in(ids, existing.column(id_col).combine_chunks())))
        if len(new) == 0:
            return None
        new = new.take(pc.sort_indices(new))
        numbered = pa.table({id_col: new, idx_col: pa.array(np.arange(len(new), dtype=np.int32) + offset + 1)})
        return lake.upsert_arrow(table, numbered, [id_col], read_version=read_version, schema=schema)

    return lake.transact(table, write)  # type: ignore[arg-type]  # None: nothing new, nothing committed


def build_events(accepted: pa.Table, users: pa.Table, lake: Lake, cfg: WeightConfig, src: GenericSource) -> pa.Table:
    """``features.events.build_events`` (timestamps or file order) with its dropDuplicates by
    (user, item, seq) keeping the first row; ``users``: the batch's (user_id, user_idx)."""
    items = lake.read_arrow("item_index", ["item_id", "item_idx"], where={"item_id": accepted.column("item_id")})
    t = accepted.select(["user_id", "item_id", "rating", "event_time", "source_line"])
    t = t.join(users, "user_id", join_type="inner").join(items, "item_id", join_type="inner")
    rating = t.column("rating").to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN
    implicit = np.isnan(rating)
    if src.implicit_rating is not None:
        implicit |= rating == src.implicit_rating
    scale = cfg.rating_scale or src.rating_max or 1.0
    explicit = {"rating": rating / scale, "binary": np.ones_like(rating),
                "log1p": 1.0 + np.log1p(rating)}[cfg.mode]
    weight = np.where(implicit, cfg.implicit_value, explicit)
    positive = (np.ones(len(rating), bool) if cfg.positive_min_rating is None
                else implicit | (np.nan_to_num(rating, nan=-np.inf) >= cfg.positive_min_rating))
    micros = pc.cast(t.column("event_time"), pa.int64())
    seconds = pc.cast(pc.floor(pc.divide(pc.cast(micros, pa.float64()), 1e6)), pa.int64())
    seq = pc.coalesce(seconds, pc.cast(t.column("source_line"), pa.int64()), pa.scalar(0, pa.int64()))
    events = pa.table({"user_idx": t.column("user_idx"), "item_idx": t.column("item_idx"),
                       "rating": t.column("rating"), "weight": pa.array(weight, pa.float64()),
                       "event_time": t.column("event_time"), "seq": seq,
                       "is_positive": pa.array(positive)})
    first = events.append_column("__row", pa.array(np.arange(events.num_rows))).group_by(
        ["user_idx", "item_idx", "seq"]).aggregate([("__row", "min")])
    return events.take(np.sort(first.column("__row_min").to_numpy()))


def in_arrival_order(accepted: pa.Table) -> pa.Table:
    """``features.events.in_arrival_order``: ``source_line`` renumbered 1..n by file and line."""
    order = pc.sort_indices(accepted, [("source_file", "ascending"), ("source_line", "ascending")])
    position = np.empty(accepted.num_rows, np.int64)
    position[order.to_numpy()] = np.arange(1, accepted.num_rows + 1)
    return accepted.set_column(accepted.schema.get_field_index("source_line"), "source_line",
                               pa.array(position, accepted.schema.field("source_line").type))


def continue_sequences(events: pa.Table, lake: Lake) -> pa.Table:
    """``features.events.continue_sequences``: a known (user, item) pair keeps its seq, a new one
    follows the user's latest event, in arrival order."""
    old = lake.read_arrow("events", ["user_idx", "item_idx", "seq"], where={"user_idx": events.column("user_idx")})
    df = pd.DataFrame({"u": events.column("user_idx").to_numpy(), "i": events.column("item_idx").to_numpy(),
                       "s": events.column("seq").to_numpy()})
    known = old.to_pandas().rename(columns={"user_idx": "u", "item_idx": "i", "seq": "s"})
    df = df.merge(known.groupby(["u", "i"], as_index=False)["s"].min().rename(columns={"s": "old"}),
                  on=["u", "i"], how="left")
    df = df.merge(known.groupby("u", as_index=False)["s"].max().rename(columns={"s": "latest"}), on="u", how="left")
    new = df["old"].isna().to_numpy()
    rank = np.zeros(len(df), np.int64)
    fresh = df[new].sort_values(["u", "s", "i"])
    rank[fresh.index.to_numpy()] = fresh.groupby("u").cumcount().to_numpy() + 1
    seq = np.where(new, df["latest"].fillna(0).to_numpy(np.int64) + rank, df["old"].fillna(0).to_numpy(np.int64))
    return events.set_column(events.schema.get_field_index("seq"), "seq", pa.array(seq, pa.int64()))


# --------------------------------------------------------------------------- per-user state
@dataclass
class UserEvents:
    """The affected users' every event (sorted by user, seq, item, weight), read once after the
    events MERGE: their histories and model inputs both come from it."""

    user_idx: np.ndarray
    item_idx: np.ndarray
    seq: np.ndarray
    weight: np.ndarray
    positive: np.ndarray

    @classmethod
    def read(cls, lake: Lake, users: np.ndarray) -> UserEvents:
        t = lake.read_arrow("events", ["user_idx", "item_idx", "seq", "weight", "is_positive"],
                            where={"user_idx": users})
        u, i, s = (t.column(c).to_numpy().astype(np.int64) for c in ("user_idx", "item_idx", "seq"))
        w = t.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
        p = t.column("is_positive").to_numpy(zero_copy_only=False).astype(bool)
        order = np.lexsort((w, i, s, u))
        return cls(u[order], i[order], s[order], w[order], p[order])

    def positives(self) -> UserEvents:
        p = self.positive
        return UserEvents(self.user_idx[p], self.item_idx[p], self.seq[p], self.weight[p], p[p])


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct sorted keys, start offsets + end) of a sorted array."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    return keys[starts], np.r_[starts, len(keys)].astype(np.int64)


def _last_n(bounds: np.ndarray, n: int) -> np.ndarray:
    """Positions of each group's last ``n`` elements, in order, and the new bounds."""
    lengths = np.minimum(np.diff(bounds), n)
    starts = bounds[1:] - lengths
    take = np.concatenate([np.arange(s, e) for s, e in zip(starts, bounds[1:], strict=True)]) if len(starts) \
        else np.zeros(0, np.int64)
    return take.astype(np.int64), np.r_[0, np.cumsum(lengths)].astype(np.int32)


def _lists(values: np.ndarray, offsets: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, type_))


def user_histories(events: UserEvents, length: int) -> pa.Table:
    """``features.builders.user_histories``: each user's last ``length`` positives, oldest
    first, ties by item then weight."""
    pos = events.positives()
    users, bounds = _groups(pos.user_idx)
    take, offsets = _last_n(bounds, length)
    return pa.table({"user_idx": pa.array(users.astype(np.int32)),
                     "item_idxs": _lists(pos.item_idx[take].astype(np.int32), offsets, pa.int32()),
                     "seqs": _lists(pos.seq[take], offsets, pa.int64()),
                     "weights": _lists(pos.weight[take].astype(np.float32), offsets, pa.float32())})


def model_inputs(events: UserEvents, user_ids: dict[int, str], n: int, gap_scale: float) -> pa.Table:
    """``recommend.job.current_states`` for these users (``model.data.tower_inputs`` and
    ``ranking.seen_items``): the last ``n`` positives as left-padded model rows with log gaps to
    the latest, every positive item once at its largest weight, every item seen."""
    pos = events.positives()
    users, bounds = _groups(pos.user_idx)
    take, offsets = _last_n(bounds, n)
    hist = np.zeros((len(users), n), np.int32)
    gaps = np.zeros((len(users), n), np.float32)
    for r in range(len(users)):
        rows = take[offsets[r]:offsets[r + 1]]
        if not len(rows):
            continue
        seq = pos.seq[rows]
        hist[r, n - len(rows):] = pos.item_idx[rows] + 1
        gaps[r, n - len(rows):] = np.log1p(np.maximum(seq[-1] - seq, 0) / gap_scale)
    best = pd.DataFrame({"u": pos.user_idx, "i": pos.item_idx + 1, "w": pos.weight}).groupby(
        ["u", "i"], sort=True)["w"].max().reset_index()
    seen = pd.DataFrame({"u": events.user_idx, "i": events.item_idx + 1}).drop_duplicates().sort_values(["u", "i"])
    items = best.groupby("u")["i"].agg(list)
    weights = best.groupby("u")["w"].agg(lambda w: list(w.astype(np.float32)))
    seen_lists = seen.groupby("u")["i"].agg(list)
    return pa.table({
        "user_idx": pa.array(users.astype(np.int32)),
        "user_id": pa.array([user_ids[int(u)] for u in users], pa.string()),
        "hist": pa.array(hist.tolist(), pa.list_(pa.int32())),
        "gaps": pa.array(gaps.tolist(), pa.list_(pa.float32())),
        "seen": pa.array([seen_lists[u] for u in users], pa.list_(pa.int32())),
        "basis": pa.array(["history"] * len(users), pa.string()),
        "items": pa.array([items[u] for u in users], pa.list_(pa.int32())),
        "weights": pa.array([weights[u] for u in users], pa.list_(pa.float32()))})


# --------------------------------------------------------------------------- prequential
def arrivals(lake: Lake, accepted: pa.Table, app_id: str, batch_id: int, frozen_at: int | None) -> pa.Table:
    """``prequential.arrivals``: each accepted event with its item's rank in its user's live
    and frozen (version ``frozen_at``) list."""
    events = accepted.select(["event_id", "user_id", "item_id", "event_time"])
    first = events.append_column("__row", pa.array(np.arange(events.num_rows))).group_by("event_id").aggregate(
        [("__row", "min")])
    events = events.take(np.sort(first.column("__row_min").to_numpy()))
    users = {"user_id": events.column("user_id")}

    def ranks(version: int | None, name: str) -> pa.Table:
        lists = lake.read_arrow(prequential.LISTS, ["user_id", "item_id", "rank"], where=users, version=version)
        return lists.rename_columns(["user_id", "item_id", name]).cast(
            pa.schema([("user_id", pa.string()), ("item_id", pa.string()), (name, pa.int32())]))

    joined = events.join(ranks(None, "rank_live"), ["user_id", "item_id"], join_type="left outer")
    if frozen_at is not None:
        joined = joined.join(ranks(frozen_at, "rank_frozen"), ["user_id", "item_id"], join_type="left outer")
    else:
        joined = joined.append_column("rank_frozen", pa.nulls(joined.num_rows, pa.int32()))
    n = joined.num_rows
    now = dt.datetime.now(dt.UTC)
    return joined.append_column("app_id", pa.array([app_id] * n, pa.string())) \
        .append_column("batch_id", pa.array([batch_id] * n, pa.int64())) \
        .append_column("frozen_version", pa.array([frozen_at] * n, pa.int64())) \
        .append_column("arrived_at", pa.array([now] * n, pa.timestamp("us", tz="UTC")))


def metrics_row(values: tuple[Any, ...]) -> pa.Table:
    """``stream_batches``' row of these values, committed now."""
    schema = to_arrow_schema(schemas.STREAM_BATCHES)
    return pa.Table.from_pylist([dict(zip(schema.names, [*values, dt.datetime.now(dt.UTC)], strict=True))], schema)


# --------------------------------------------------------------------------- refresh
@dataclass
class _Scoring:
    key: tuple[str, int, int]  # (served run, item_features version, item_embeddings version)
    payload: Any  # recommend.score.Payload
    facts: Any  # serve.explain.ItemFacts, by model row
    ids: list[str | None]  # item_id by model row
    history: int
    gap_scale: float


class Refresher:
    """``run_recommend`` for a batch's users, with the served hybrid, its scoring payload and the
    catalogue's explanation facts loaded once and kept while the served run, ``item_features``
    and ``item_embeddings`` stay the same (the Spark path loads them every batch)."""

    def __init__(self, cfg: Config, lake: Lake) -> None:
        self.cfg, self.lake = cfg, lake
        self._scoring: _Scoring | None = None
        self._served: tuple[float, Any] | None = None  # (when resolved, ServedRun)

    def _served_run(self) -> Any:
        """``resolve_run``, asked again only every ``stream.model_check_seconds``: it queries
        MLflow and checks the run's provenance (0.3-1 s, measured), which a batch of ~2 s cannot
        pay every time; a new training run or champion is picked up within that interval."""
        from ..model.store import resolve_run

        now = time.monotonic()
        if self._served is None or now - self._served[0] >= self.cfg.stream.model_check_seconds:
            self._served = (now, resolve_run(self.cfg, self.lake))
        return self._served[1]

    def prepare(self) -> None:
        """Loads the served model now (the query's start), not in its first batch."""
        try:
            self._load()
        except Exception as exc:  # no servable model yet: the batches say so when they refresh
            log.info("no model loaded before the stream started: %s", exc)

    def _load(self) -> _Scoring | None:
        from ..recommend.catalogue import load_catalogue
        from ..recommend.job import eligibility, make_payload
        from ..recommend.served import load_served

        served = self._served_run()
        if served.model != "hybrid":
            return None
        # new items reach the served model through both (recommend.served): their rows, their text
        vectors = self.lake.version("item_embeddings") if self.lake.exists("item_embeddings") else -1
        key = (served.run_id, self.lake.version("item_features"), vectors)
        if self._scoring is None or self._scoring.key != key:
            loaded = load_served(self.cfg, self.lake, served.run_id)
            cat = load_catalogue(self.lake, loaded.spec.n_items, loaded.catalog.has_id)
            self._scoring = _Scoring(key, make_payload(self.cfg, loaded, eligibility(self.cfg, self.lake, loaded)),
                                     cat.facts, cat.ids, int(loaded.meta.get("history", loaded.spec.history)),
                                     float(loaded.meta.get("gap_scale", 1.0)))
        return self._scoring

    def lists(self, events: UserEvents, user_ids: dict[int, str]) -> pa.Table | None:
        """The users' explained top-K rows (``recommendations``' columns); None when this batch
        needs the Spark path: a baseline served, LLM explanations on, a table of the older
        shape, or an affected user without a positive event whom interest text may score."""
        from ..recommend.job import TABLE
        from ..recommend.llm import TEMPLATE
        from ..recommend.score import score_batches
        from ..recommend.template import explain_row

        lake = self.lake
        if self.cfg.explain.llm.enabled or "explanation_source" not in lake.columns(TABLE):
            return None
        if len(np.setdiff1d(np.fromiter(user_ids, np.int64), events.positives().user_idx)) \
                and lake.exists("user_text_embeddings"):
            return None
        scoring = self._load()
        if scoring is None:
            return None
        states = model_inputs(events, user_ids, scoring.history, scoring.gap_scale)
        out_schema = to_arrow_schema(schemas.RECOMMENDATIONS)
        batches = list(score_batches(scoring.payload, iter(states.to_batches())))
        if not batches:
            return out_schema.empty_table()
        scored = pa.Table.from_batches(batches)
        rows = []
        attrs = self.cfg.recommend.explain_attributes
        for r in scored.to_pylist():
            model_row = r["item_idx"] + 1
            told = explain_row(scoring.facts, model_row, [e + 1 for e in r["evidence_idx"]], r["basis"], attrs)
            rows.append({"user_idx": r["user_idx"], "user_id": r["user_id"], "rank": r["rank"],
                         "item_idx": r["item_idx"], "item_id": scoring.ids[model_row] if model_row < len(
                             scoring.ids) else None, "score": r["score"], "explanation": told["explanation"],
                         "explanation_source": TEMPLATE, "evidence": told["evidence"],
                         "model_version": scoring.key[0], "generated_at": dt.datetime.now(dt.UTC)})
        return pa.Table.from_pylist(rows, out_schema)
