"""Serving a baseline champion (EASE, ALS, ItemKNN, most-popular, content-only) over HTTP.

When ``recommend.model`` names a baseline (``champion`` after ``sparkrec evaluate`` picked one),
the service loads it as the batch stage does (``load_recommender``) and scores a request with
the model's own scorer over its driver-side matrices (``local_scorer``) and the same cut
(``block_top_k``: seen items masked, then ``selection.cut``), so a known user's list is the
batch stage's list. Evidence is chosen as ``recommend.baseline.with_evidence`` chooses it (the
user's latest ``model.history`` positives nearest the item by text cosine, else by
co-occurrence) and rendered by the shared template. A baseline has no text tower and no item
space of its own, so text requests, text-only users and similar items answer 409.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ..baselines.base import scoring_inputs
from ..baselines.saved import load_recommender
from ..baselines.scoring import ItemSpace, LocallyScored, ScoreBlock, block_top_k, user_block
from ..config import Config, RecommendFilters
from ..lake import Lake
from ..logs import get_logger, log_fields
from ..model.recommender import Recommender
from ..model.store import ServedRun
from ..ragged import csr
from ..recommend.baseline import recent_positives
from ..recommend.job import allowed_items
from .explain import explain_row
from .scoring import RequestError, eligible_for
from .state import Catalogue, load_catalogue, served_vocabulary

log = get_logger("serve.baseline")


@dataclass(frozen=True)
class BaselineUsers:
    """Every user with a positive event, as the baseline scorers read them (``scoring_inputs``)."""

    rows: dict[str, int]  # user_id -> row of the CSRs below
    user_idx: np.ndarray
    hist: tuple[np.ndarray, np.ndarray]  # CSR of positive item_idx (a re-rated item once)
    weights: np.ndarray  # aligned with hist[1]: the pair's largest weight
    seen: tuple[np.ndarray, np.ndarray]  # CSR of every item_idx with an event
    recent: tuple[np.ndarray, np.ndarray]  # CSR of the latest model.history positives: evidence
    text_only: frozenset[str]  # users known only by interest text: a baseline cannot score them
    events_version: int


@dataclass(frozen=True)
class EvidenceSpace:
    """The space ``recommend.baseline.item_similarity`` cites evidence in: item text vectors
    (by item_idx; a zero row has none) when the embed stage ran, else co-occurrence (per
    item_idx, the sorted users with a positive event on it)."""

    vectors: np.ndarray | None = None
    item_users: tuple[np.ndarray, np.ndarray] | None = None

    def similarity(self, history: np.ndarray, item: int) -> np.ndarray:
        """sim(history item, item), NaN where the pair has none (no vector, never together)."""
        out = np.full(len(history), np.nan)
        if self.vectors is not None:
            v = self.vectors
            ok = (history < len(v)) & (item < len(v))
            if item < len(v) and ok.any():
                h = v[history[ok]]
                norms = np.linalg.norm(h, axis=1) * np.linalg.norm(v[item])
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[ok] = np.where(norms > 0, (h @ v[item]) / norms, np.nan)
            return out
        assert self.item_users is not None
        indptr, users = self.item_users
        n = len(indptr) - 1
        mine = users[indptr[item]:indptr[item + 1]] if item < n else users[:0]
        for i, h in enumerate(history.tolist()):
            both = len(np.intersect1d(users[indptr[h]:indptr[h + 1]], mine, assume_unique=True)) if h < n else 0
            out[i] = both if both else np.nan
        return out

    def cite(self, history: np.ndarray, item: int, n: int) -> list[int]:
        """The ``n`` history items most similar to ``item`` (never itself), most similar first,
        ties to the smaller item_idx: ``with_evidence``'s window order."""
        cand = history[history != item]
        sims = self.similarity(cand, item)
        ok = ~np.isnan(sims)
        cand, sims = cand[ok], sims[ok]
        return cand[np.lexsort((cand, -sims))[:n]].tolist()


@dataclass(frozen=True)
class BaselineState:
    """One consistent snapshot of a served baseline; the API reads it like ``ServingState``."""

    run_id: str
    model_name: str
    model: Recommender
    score_block: ScoreBlock
    space: ItemSpace
    eligible: np.ndarray  # by model row (item_idx + 1): recommend.filters, as allowed_items reads them
    catalogue: Catalogue
    users: BaselineUsers
    evidence: EvidenceSpace
    vocabulary: tuple[str, ...] = ()
    loaded_at: float = field(default_factory=time.time)
    stats: dict[str, Any] = field(default_factory=dict)
    index_kind = "exact"  # every item scored, as the batch stage does
    text_payload = None  # no text tower: /ready reports text requests as unavailable

    def refuse(self, what: str, why: str) -> RequestError:
        """The 409 for a request this model cannot answer, naming the model and the reason."""
        return RequestError(409, f"the served model is {self.model_name} (run {self.run_id}): {what} {why}; "
                                 "serve the hybrid (recommend.model=hybrid) for that")


def _column_lists(pdf: Any, name: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    return csr(pdf[name].to_list(), dtype) if len(pdf) else (np.zeros(1, np.int64), np.zeros(0, dtype))


def load_users(cfg: Config, spark: SparkSession, lake: Lake) -> BaselineUsers:
    """Current histories from the events table, built by the code ``observe`` uses."""
    version = lake.version("events")
    events = lake.read("events")
    index = lake.read("user_index").select("user_id", "user_idx")
    recent = (recent_positives(events, cfg.model.history).groupBy("user_idx")
              .agg(F.collect_list("i").alias("recent")))
    pdf = (scoring_inputs(events).filter(F.size("hist_items") > 0).join(index, "user_idx")
           .join(recent, "user_idx", "left").toPandas())
    text_only: frozenset[str] = frozenset()
    if lake.exists("user_text_embeddings"):
        ids = {r[0] for r in lake.read("user_text_embeddings").select("user_id").distinct().collect()}
        text_only = frozenset(ids - set(pdf["user_id"]))
    return BaselineUsers(rows={u: i for i, u in enumerate(pdf["user_id"])},
                         user_idx=pdf["user_idx"].to_numpy(np.int64), hist=_column_lists(pdf, "hist_items", np.int64),
                         weights=_column_lists(pdf, "hist_weights", np.float32)[1],
                         seen=_column_lists(pdf, "seen", np.int64), recent=_column_lists(pdf, "recent", np.int64),
                         text_only=text_only, events_version=version)


def load_evidence(lake: Lake) -> EvidenceSpace:
    """Text vectors when ``item_embeddings`` exists (as ``item_similarity`` decides), else the
    positive (item, user) incidence."""
    if lake.exists("item_embeddings"):
        pdf = lake.read("item_embeddings").select("item_idx", "vector").filter(F.size("vector") > 0).toPandas()
        if not len(pdf):
            return EvidenceSpace(vectors=np.zeros((0, 0)))
        vectors = np.zeros((int(pdf["item_idx"].max()) + 1, len(pdf["vector"].iloc[0])), np.float64)
        vectors[pdf["item_idx"].to_numpy(np.int64)] = np.stack(pdf["vector"].to_numpy()).astype(np.float32)
        return EvidenceSpace(vectors=vectors)
    pos = (lake.read("events").filter("is_positive").select("item_idx", "user_idx").distinct()
           .groupBy("item_idx").agg(F.sort_array(F.collect_list("user_idx")).alias("users")).toPandas())
    n = int(pos["item_idx"].max()) + 1 if len(pos) else 0
    lists: list[np.ndarray | None] = [None] * n
    for i, users in zip(pos["item_idx"], pos["users"], strict=True):
        lists[int(i)] = users
    return EvidenceSpace(item_users=csr(lists, np.int64))


def base_eligibility(cfg: Config, lake: Lake, n_items: int) -> np.ndarray:
    """``allowed_items`` (the batch stage's candidates for a baseline) by model row."""
    allowed = allowed_items(cfg, lake)
    eligible = np.zeros(n_items + 1, dtype=bool)
    if allowed is None:
        eligible[1:] = True
    else:
        eligible[allowed[allowed < n_items] + 1] = True
    return eligible


def load_baseline_state(cfg: Config, spark: SparkSession, lake: Lake, served: ServedRun) -> BaselineState:
    """The baseline saved in ``served``, its scorer, the catalogue and every user's history."""
    started = time.perf_counter()
    model = load_recommender(served.run_id, cfg.train.mlflow_uri)
    if not hasattr(model, "local_scorer"):
        raise ValueError(f"{served.model} (run {served.run_id}) cannot score a request outside Spark")
    scorer: LocallyScored = model  # type: ignore[assignment]
    score_block, space = scorer.local_scorer()
    feats = lake.read("item_features").select("item_idx", "n_interactions").toPandas()
    n_items = int(max(feats["item_idx"].max() if len(feats) else -1, space.item_ids.max(initial=-1))) + 1
    has_id = np.zeros(n_items + 1, dtype=bool)
    has_id[feats.loc[feats["n_interactions"].fillna(0) > 0, "item_idx"].to_numpy(np.int64) + 1] = True
    state = BaselineState(
        run_id=served.run_id, model_name=served.model, model=model, score_block=score_block, space=space,
        eligible=base_eligibility(cfg, lake, n_items), catalogue=load_catalogue(lake, n_items, has_id),
        users=load_users(cfg, spark, lake), evidence=load_evidence(lake),
        vocabulary=served_vocabulary(cfg, lake))
    state.stats.update(model=served.model, items=len(space), users=len(state.users.rows), index="exact",
                       seconds=round(time.perf_counter() - started, 2))
    log_fields(log, "baseline serving state loaded", run_id=served.run_id, **state.stats)
    return state


def with_new_users(state: BaselineState, cfg: Config, spark: SparkSession, lake: Lake) -> BaselineState:
    """The same model over the histories the events table holds now."""
    from dataclasses import replace

    users = load_users(cfg, spark, lake)
    log_fields(log, "user histories reloaded", run_id=state.run_id, users=len(users.rows),
               events_version=users.events_version)
    return replace(state, users=users, loaded_at=time.time(), stats={**state.stats, "users": len(users.rows)})


@dataclass(frozen=True)
class History:
    """One request's user: positives (item_idx, weights), what to exclude, what evidence cites."""

    items: np.ndarray
    weights: np.ndarray
    seen: np.ndarray
    recent: np.ndarray
    user_idx: int = -1


def known_user(state: BaselineState, user_id: str) -> History:
    users = state.users
    row = users.rows.get(user_id)
    if row is None:
        if user_id in users.text_only:
            raise state.refuse(f"user {user_id!r} is known only by interest text, which",
                               "it cannot score (it ranks from item history alone)")
        raise RequestError(404, f"unknown user_id {user_id!r}: no positive event and no interest text")

    def part(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return pair[1][pair[0][row]:pair[0][row + 1]]

    lo, hi = users.hist[0][row], users.hist[0][row + 1]
    return History(items=part(users.hist), weights=users.weights[lo:hi], seen=part(users.seen),
                   recent=part(users.recent), user_idx=int(users.user_idx[row]))


def session(state: BaselineState, item_ids: list[str], history: int) -> History:
    """An anonymous session's items, oldest first, as the positives of a new user (weight 1)."""
    rows = state.catalogue.rows
    unknown = [i for i in item_ids if i not in rows]
    if unknown:
        raise RequestError(404, f"unknown item_id(s) in recent_items: {', '.join(map(repr, unknown[:10]))}")
    items = np.array(list(dict.fromkeys(rows[i] - 1 for i in item_ids)), np.int64)
    return History(items=items, weights=np.ones(len(items), np.float32), seen=items, recent=items[-history:])


def recommend(state: BaselineState, who: History, k: int, filters: RecommendFilters | None,
              max_attributes: int, explain_items: int, exclude_seen: bool = True) -> list[dict[str, Any]]:
    """Top-``k`` explained items: the batch stage's scorer and cut for one user."""
    eligible = eligible_for(state.eligible, state.catalogue, filters)
    rows = state.space.item_ids.astype(np.int64) + 1
    allowed = np.zeros(len(rows), dtype=bool)
    inside = rows < len(eligible)
    allowed[inside] = eligible[rows[inside]]
    block = user_block(who.items, who.weights, who.seen, who.user_idx)
    cols, scores = block_top_k(block, state.score_block, state.space, k, exclude_seen, allowed)
    cat, out = state.catalogue, []
    for col, score in zip(cols[0], scores[0], strict=True):
        if col < 0:
            break
        item = int(state.space.item_ids[col])
        if cat.ids[item + 1] is None:
            continue
        cited = [i + 1 for i in state.evidence.cite(who.recent, item, explain_items)]
        out.append({"rank": len(out) + 1, "item_id": cat.ids[item + 1], "title": cat.facts.titles[item + 1],
                    "score": float(score),
                    **explain_row(cat.facts, item + 1, cited, "history", max_attributes)})
    return out
