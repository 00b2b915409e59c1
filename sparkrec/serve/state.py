"""What the server holds in memory: one immutable snapshot of model, items and user histories.

Everything is built at load time with the batch stage's own code (``resolve_model``,
``eligibility``, ``make_payload``, ``current_states``, ``item_facts``), which may use Spark;
requests then only read numpy arrays. A snapshot is never changed after it is built: a reload
builds a new one and the holder swaps a single reference, so a request that started on the old
snapshot finishes on it (see :mod:`.reload`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ..config import Config, ServeConfig
from ..lake import Lake
from ..logs import get_logger, log_fields
from ..model.blend import tower_scale
from ..model.head import LinearHead
from ..model.registry import LoadedModel
from ..ragged import csr
from ..recommend.catalogue import Catalogue, load_catalogue
from ..recommend.job import current_states, eligibility, make_payload, resolve_model
from ..recommend.llm import catalogue_vocabulary
from ..recommend.score import Payload, TowerFn, model_user_rows, user_tower, user_vectors
from .index import Index, PoolIndex, TextBlendIndex, make_indexes

log = get_logger("serve.state")


@dataclass(frozen=True)
class Users:
    """Every user with a positive event, as model inputs (rows of these arrays, not user_idx)."""

    rows: dict[str, int]  # user_id -> row
    user_idx: np.ndarray  # (U,) int64
    hist: np.ndarray  # (U, n) int64 model rows, left-padded with 0
    gaps: np.ndarray  # (U, n) float32
    seen: tuple[np.ndarray, np.ndarray]  # CSR of model rows of every event (seen items)
    items: tuple[np.ndarray, np.ndarray]  # CSR of model rows of every positive (the head's input)
    weights: np.ndarray  # flat, aligned with items[1]
    vectors: np.ndarray  # (U, d) float32: each user's query vector (user tower, rescaled for the head)
    factors: np.ndarray | None  # (U, rank) float32: each user's folded-in factors (the head's factor term)
    text_only: dict[str, np.ndarray]  # user_id -> interest text vector, users with no positive event
    events_version: int


@dataclass(frozen=True)
class ServingState:
    """One consistent snapshot; ``run_id`` names the model it serves."""

    run_id: str
    model: LoadedModel
    payload: Payload  # the batch stage's scoring inputs: item matrix, tower weights, head, eligibility
    index: Index  # over payload.items (tower space)
    catalogue: Catalogue
    users: Users
    text_payload: Payload | None = None  # payload + item text (``score.blend``)
    has_text: np.ndarray | None = None
    blend_index: TextBlendIndex | None = None  # [items, text]: text-only users, as recommend_for_text
    text_index: PoolIndex | None = None  # over item text: a text's nearest items (its pseudo-history)
    vocabulary: tuple[str, ...] = ()  # the catalogue's genres, for the LLM explanations' verifier
    tower_fn: TowerFn | None = None  # the user tower a request runs (serve.user_tower); None: PyTorch
    loaded_at: float = field(default_factory=time.time)
    stats: dict[str, Any] = field(default_factory=dict)
    model_name = "hybrid"

    @property
    def index_kind(self) -> str:
        return self.index.kind


def query_vectors(payload: Payload, user_idx: np.ndarray, hist: np.ndarray, gaps: np.ndarray,
                  batch: int = 4096) -> np.ndarray:
    """Every known user's query vector, once per snapshot, in batches as the batch stage does.

    Why: a known user's vector depends only on their history, which a snapshot fixes; running
    the user tower and the head's rescaling per request was most of a request's CPU. A reload
    that brings new events builds new vectors with the new histories.
    """
    model_users = model_user_rows(user_idx, int(payload.spec["n_users"]))
    out = [np.zeros((0, payload.items.shape[1]), np.float32)]
    for s in range(0, len(hist), batch):
        u = user_vectors(payload, model_users[s:s + batch], hist[s:s + batch], gaps[s:s + batch])
        out.append(tower_scale(u, payload.items, payload.head, payload.tower_weight).astype(np.float32))
    return np.concatenate(out)


def load_users(spark: SparkSession, lake: Lake, loaded: LoadedModel, payload: Payload) -> Users:
    """Current histories from the events table (what ingest, features and the stream have MERGEd)
    and the query vectors they give under ``payload``'s model."""
    version = lake.version("events")
    pdf = current_states(lake, loaded, None).drop("basis").toPandas()
    n = int(loaded.meta.get("history", loaded.spec.history))
    hist = np.stack(pdf["hist"].to_numpy()).astype(np.int64) if len(pdf) else np.zeros((0, n), np.int64)
    gaps = np.stack(pdf["gaps"].to_numpy()).astype(np.float32) if len(pdf) else np.zeros((0, n), np.float32)
    items = csr(pdf["items"].to_list(), np.int64)
    weights = csr(pdf["weights"].to_list(), np.float32)[1]
    text_only: dict[str, np.ndarray] = {}
    if lake.exists("user_text_embeddings"):
        texts = (lake.read("user_text_embeddings").filter(F.col("vector").isNotNull())
                 .select("user_id", "vector").toPandas())
        known = set(pdf["user_id"])
        text_only = {u: np.asarray(v, np.float32) for u, v in zip(texts["user_id"], texts["vector"], strict=True)
                     if u not in known and v is not None and len(v)}
    user_idx = pdf["user_idx"].to_numpy(np.int64)
    return Users(rows={u: i for i, u in enumerate(pdf["user_id"])}, user_idx=user_idx,
                 hist=hist, gaps=gaps, seen=csr(pdf["seen"].to_list(), np.int64), items=items, weights=weights,
                 vectors=query_vectors(payload, user_idx, hist, gaps),
                 factors=user_factors(payload.head, items, weights),
                 text_only=text_only, events_version=version)


def user_factors(head: LinearHead | None, items: tuple[np.ndarray, np.ndarray], weights: np.ndarray
                 ) -> np.ndarray | None:
    """Every known user's folded-in factors for the head's factor term, once per snapshot; None
    when the served model has no factor term.

    Why: like the query vectors, they depend only on the history a snapshot fixes, and folding
    one user in per request (a rank x rank system and its bookkeeping) was ~2 ms, most of a
    known user's request on Book-Crossing."""
    if head is None or not head.factor_term:
        return None
    indptr, rows = items
    return head.user_factors(head.entries(indptr, rows, weights))


def served_vocabulary(cfg: Config, lake: Lake) -> tuple[str, ...]:
    """The catalogue's genres for the LLM explanations' verifier; nothing when they are off."""
    return tuple(catalogue_vocabulary(lake.read("item_features"))) if cfg.explain.llm.enabled else ()


def request_tower(sc: ServeConfig, payload: Payload) -> TowerFn | None:
    """The user tower text and session requests run: ONNX Runtime (see :mod:`..model.tower_onnx`)
    unless ``serve.user_tower`` is torch; PyTorch's (None) also when the export cannot be made
    or does not match, which the log says."""
    if sc.user_tower == "torch":
        return None
    try:
        from ..model.tower_onnx import OnnxUserTower

        return OnnxUserTower(user_tower(payload), sc.threads)
    except Exception as exc:  # no onnxruntime, an operator the exporter lacks, a mismatch: serve anyway
        log.warning("serve.user_tower=onnx unavailable, requests run the PyTorch user tower: %s: %s",
                    type(exc).__name__, exc)
        return None


def load_state(cfg: Config, spark: SparkSession, lake: Lake) -> ServingState:
    """The model ``recommend.model`` names (the hybrid: the one kind that scores a request
    without Spark), its item matrix and index, the catalogue and every user's history."""
    started = time.perf_counter()
    loaded = resolve_model(cfg, lake)
    payload = make_payload(cfg, loaded, eligibility(cfg, lake, loaded))
    sc = cfg.serve
    text_payload = has_text = None
    if loaded.catalog.text is not None:
        text = np.ascontiguousarray(loaded.catalog.text, dtype=np.float32)
        has_text = np.abs(text).sum(axis=1) > 0
        has_text[0] = False
        text_payload = dataclasses.replace(payload, text=text)
    index, text_index, blend_index = make_indexes(payload.items, None if text_payload is None else text_payload.text,
                                                  sc.index, sc.faiss, sc.threads, cfg.recommend.item_block_rows)
    state = ServingState(run_id=loaded.version, model=loaded, payload=payload, index=index,
                         catalogue=load_catalogue(lake, loaded.spec.n_items, loaded.catalog.has_id),
                         users=load_users(spark, lake, loaded, payload),
                         text_payload=text_payload, has_text=has_text, blend_index=blend_index,
                         text_index=text_index,
                         vocabulary=served_vocabulary(cfg, lake), tower_fn=request_tower(sc, payload))
    state.stats.update(items=int(payload.items.shape[0] - 1), users=len(state.users.rows),
                       text_only_users=len(state.users.text_only), index=index.kind,
                       user_tower="torch" if state.tower_fn is None else sc.user_tower,
                       seconds=round(time.perf_counter() - started, 2))
    log_fields(log, "serving state loaded", run_id=state.run_id, **state.stats)
    return state


def with_new_users(state: ServingState, spark: SparkSession, lake: Lake) -> ServingState:
    """The same model and index over the histories the events table holds now."""
    users = load_users(spark, lake, state.model, state.payload)
    log_fields(log, "user histories reloaded", run_id=state.run_id, users=len(users.rows),
               events_version=users.events_version)
    return dataclasses.replace(state, users=users, loaded_at=time.time(),
                               stats={**state.stats, "users": len(users.rows)})
