"""Top-K scoring inside Spark: user tower + blocked matrix products in ``mapInArrow``.

Executors receive one broadcast: the item matrix (every item's item-tower vector, small by
design: items x dim floats), the user tower's weights and the eligibility mask. The user
tower only needs item-tower vectors of history items, which are rows of that same matrix,
so no catalogue (text, categories) travels to executors and user vectors cost one small
attention layer per user. Users never come to the driver.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from ..arrowframes import map_in_driver
from ..model.blend import head_scores, tower_scale
from ..model.head import LinearHead
from ..ragged import arrow_csr
from .topk import evidence, top_k

SCORED = T.StructType([T.StructField("user_idx", T.IntegerType()), T.StructField("user_id", T.StringType()),
                       T.StructField("rank", T.IntegerType()), T.StructField("item_idx", T.IntegerType()),
                       T.StructField("score", T.DoubleType()),
                       T.StructField("evidence_idx", T.ArrayType(T.IntegerType())),
                       T.StructField("basis", T.StringType())])
PSEUDO = T.StructType([T.StructField("user_idx", T.IntegerType()), T.StructField("user_id", T.StringType()),
                       T.StructField("hist", T.ArrayType(T.IntegerType())),
                       T.StructField("gaps", T.ArrayType(T.FloatType())),
                       T.StructField("query", T.ArrayType(T.FloatType()))])


@dataclass
class Payload:
    """What every scoring task needs; pickled once into a broadcast."""

    items: np.ndarray  # (n_items + 1, d) float32, model index (row 0: padding)
    eligible: np.ndarray  # (n_items + 1,) bool
    tower: dict[str, np.ndarray]  # UserTower state dict
    spec: dict[str, Any]
    k: int
    block_rows: int
    user_batch: int
    explain_items: int
    exclude_seen: bool
    text: np.ndarray | None = None  # (n_items + 1, D) float16 unit item text vectors, for text-only users
    text_neighbours: int = 10
    text_weight: float = 1.0
    blend_items: np.ndarray | None = None  # built lazily on executors from items and text
    head: LinearHead | None = None  # the hybrid's collaborative head (model.blend: how it is mixed in)
    tower_weight: float = 1.0
    key: str = field(default_factory=lambda: uuid.uuid4().hex)


_TOWERS: dict[str, Any] = {}


def user_tower(payload: Payload) -> Any:
    """One tower per Python worker and payload; torch gets one thread because Spark already
    runs one task per core, and more threads would only fight over them."""
    import torch

    from ..model.towers import ModelSpec, UserTower

    torch.set_num_threads(1)
    tower = _TOWERS.get(payload.key)  # one lookup: the HTTP server calls this from many threads
    if tower is None:
        tower = UserTower(ModelSpec.from_dict(payload.spec))
        tower.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in payload.tower.items()})
        tower = tower.eval()
        _TOWERS.clear()
        _TOWERS[payload.key] = tower
    return tower


def model_user_rows(user_idx: np.ndarray, n_users: int) -> np.ndarray:
    """user_idx -> rows of the user tower's id embedding; 0 (no id) for users the model was
    not trained with (new since training, or missing), who are served from history alone."""
    user_idx = np.asarray(user_idx, dtype=np.int64)
    return np.where((user_idx >= 0) & (user_idx < n_users), user_idx + 1, 0)


# (item_vecs, mask, gaps, users) -> unit user vectors: UserTower.forward on numpy arrays
TowerFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def user_vectors(payload: Payload, users: np.ndarray, hist: np.ndarray, gaps: np.ndarray,
                 tower_fn: TowerFn | None = None) -> np.ndarray:
    """The user tower over item-matrix rows: equal to ``TwoTower.user_vectors`` in eval mode.
    ``tower_fn``: another runtime of the same tower (the service's ONNX one) instead of PyTorch."""
    if tower_fn is not None:
        return tower_fn(payload.items[hist], hist > 0, gaps, users)
    import torch

    tower = user_tower(payload)
    with torch.no_grad():
        h = torch.from_numpy(hist)
        vecs = torch.from_numpy(payload.items)[h]
        return tower(vecs, h > 0, torch.from_numpy(gaps), torch.from_numpy(users)).numpy()


def _fixed(col: pa.Array, width: int, dtype: type) -> np.ndarray:
    return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(dtype).reshape(-1, width)


def _ragged(values: np.ndarray) -> pa.Array:
    """(rows, n) with -1 padding at the end of each row -> list<int32> of the valid prefix."""
    valid = values >= 0
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[valid].astype(np.int32)))


def score_batch(payload: Payload, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Users in, k rows per user out: (user, rank, item, score, evidence items)."""
    n_hist = payload.spec["history"]
    user_idx = batch.column("user_idx")
    idx = pc.fill_null(user_idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    model_users = model_user_rows(idx, payload.spec["n_users"])
    hist = _fixed(batch.column("hist"), n_hist, np.int64)
    u = user_vectors(payload, model_users, hist, _fixed(batch.column("gaps"), n_hist, np.float32))
    seen = arrow_csr(batch.column("seen")) if payload.exclude_seen else None
    matrix, extra = payload.items, None
    if payload.text is not None:  # text-only users: model score + weighted text cosine, as one product
        query = _fixed(batch.column("query"), payload.text.shape[1], np.float32)
        u, matrix = blend(payload, u, query)
    elif payload.head is not None and "items" in batch.schema.names:  # the hybrid: towers + linear head
        indptr, rows = arrow_csr(batch.column("items"))
        weights = pc.list_flatten(batch.column("weights")).to_numpy(zero_copy_only=False).astype(np.float32)
        extra = head_scores(payload.head, indptr, rows, weights)
        u = tower_scale(u, payload.items, payload.head, payload.tower_weight).astype(np.float32)
    recs, scores = top_k(u, matrix, payload.k, payload.eligible, seen, payload.block_rows, extra)
    ev = evidence(payload.items, hist, recs, payload.explain_items)
    k = recs.shape[1]
    keep = (recs >= 0).reshape(-1)
    rows = np.repeat(np.arange(len(idx)), k)[keep]
    ev = ev.reshape(-1, ev.shape[2])[keep]
    return pa.RecordBatch.from_arrays([
        user_idx.take(pa.array(rows)), batch.column("user_id").take(pa.array(rows)),
        pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), len(idx))[keep]),
        pa.array((recs.reshape(-1)[keep] - 1).astype(np.int32)),
        pa.array(scores.reshape(-1)[keep].astype(np.float64)),
        _ragged(np.where(ev >= 0, ev - 1, -1)), batch.column("basis").take(pa.array(rows)),
    ], schema=pa.schema([pa.field(f.name, t) for f, t in zip(SCORED.fields, (
        pa.int32(), pa.string(), pa.int32(), pa.int32(), pa.float64(), pa.list_(pa.int32()), pa.string()),
        strict=True)]))


def blend(payload: Payload, u: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[u, w q] . [v, t] = u.v + w q.t: the blend costs one wider product, not a second pass.

    Why blend for text-only users: a pseudo-history alone is dominated by what the user tower
    learnt about popular items (measured on the sample after 2 epochs: Lord of the Rings for
    "animated movie for kids"), while the text cosine keeps the list on topic.
    """
    assert payload.text is not None
    if payload.blend_items is None:
        payload.blend_items = np.hstack([payload.items, payload.text.astype(np.float32)])
    return blended_query(payload.text_weight, u, query), payload.blend_items


def blended_query(text_weight: float, u: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``blend``'s user side, [u, w q / |q|], for a search that holds the item side itself."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    return np.hstack([u, text_weight * q]).astype(np.float32)


def score_batches(payload: Payload, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for start in range(0, batch.num_rows, payload.user_batch):
            yield score_batch(payload, batch.slice(start, payload.user_batch))


def pseudo_history(text_vecs: np.ndarray, item_text: np.ndarray, neighbours: int, n_hist: int) -> np.ndarray:
    """Items nearest to free text become a pseudo-history, most similar in the latest slot.

    Why a pseudo-history rather than mixing text scores into the final ranking: the user tower
    is trained on histories, so this maps interests into model space with the model's own
    weights, and every recommendation can cite real catalogue items as its evidence.
    """
    has_text = np.abs(item_text).sum(axis=1) > 0
    has_text[0] = False
    q = text_vecs / np.maximum(np.linalg.norm(text_vecs, axis=1, keepdims=True), 1e-12)
    near, _ = top_k(q.astype(np.float32), item_text, min(neighbours, n_hist), has_text)
    return neighbours_as_history(near, n_hist)


def neighbours_as_history(near: np.ndarray, n_hist: int) -> np.ndarray:
    """(B, m) nearest item rows, best first (-1: none) -> (B, n_hist) left-padded history rows;
    apart from the search so the HTTP server can find the neighbours with its own index."""
    near = near[:, ::-1]  # oldest slot first: the nearest item sits where the latest event would
    out = np.zeros((len(near), n_hist), dtype=np.int64)
    out[:, n_hist - near.shape[1]:] = np.maximum(near, 0)
    return out


def pseudo_batches(payload: Payload, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    assert payload.text is not None
    n_hist = payload.spec["history"]
    for batch in batches:
        vecs = _fixed(batch.column("vector"), payload.text.shape[1], np.float32)
        hist = pseudo_history(vecs, payload.text, payload.text_neighbours, n_hist)
        yield pa.RecordBatch.from_arrays([
            batch.column("user_idx"), batch.column("user_id"),
            pa.FixedSizeListArray.from_arrays(pa.array(hist.reshape(-1).astype(np.int32)), n_hist).cast(
                pa.list_(pa.int32())),
            pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(hist.size, np.float32)), n_hist).cast(
                pa.list_(pa.float32())), batch.column("vector")], names=PSEUDO.names)


def score_users(spark: SparkSession, states: DataFrame, payload: Payload, partitions: int,
                in_driver: bool = False) -> DataFrame:
    """``states`` (user_idx, user_id, hist, gaps, seen, basis[, items, weights]) -> SCORED rows;
    ``items``/``weights`` (every positive, for the linear head) are what makes a list hybrid.
    ``in_driver``: a few users, scored here (see :func:`_with_payload`)."""
    source = states if in_driver else states.repartition(partitions)
    return _with_payload(spark, source, payload, score_batches, SCORED, in_driver)


def pseudo_states(spark: SparkSession, texts: DataFrame, payload: Payload, in_driver: bool = False) -> DataFrame:
    """(user_idx, user_id, vector) of interest texts -> (user_idx, user_id, hist, gaps, query)."""
    return _with_payload(spark, texts.select("user_idx", "user_id", "vector"), payload, pseudo_batches, PSEUDO,
                         in_driver)


def _with_payload(spark: SparkSession, df: DataFrame, payload: Payload,
                  fn: Callable[[Payload, Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
                  schema: T.StructType, in_driver: bool) -> DataFrame:
    """``fn(payload, batches)`` over ``df``'s rows: on the executors with the payload broadcast,
    or (``in_driver``) here, where the payload already is: broadcasting the item vectors and
    the head's m x m weights (117 MB on ml-latest-small) costs seconds, scoring a streaming
    batch's few users milliseconds."""
    if in_driver:
        return map_in_driver(spark, df, partial(fn, payload), schema)
    bc = spark.sparkContext.broadcast(payload)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from fn(bc.value, batches)

    return df.mapInArrow(run, schema)
