"""The evaluate stage: every model, one split, one evaluator -> Delta, MLflow and an HTML report.

Each model is fitted on the split's train part (baselines tune on a validation part carved
from train; the hybrid was trained by the train stage on the same split), asked for top-K
for every test user with their train items excluded, and its lists are written to
``evaluation_recommendations``. Metrics are then computed from that table, so what is judged
is exactly what is stored. Results go to ``evaluation_metrics`` (one row per model, slice,
metric and K, appended per run), to one MLflow run, and to a self-contained HTML report.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import schemas
from ..config import Config
from ..lake import Lake
from ..logs import get_logger, log_fields
from ..model.provenance import data_provenance
from ..model.registry import mlflow_name
from ..model.store import checked_run, log_recommender, register_champion
from .metrics import PROTOCOL, beyond_accuracy, ranking_metrics_by
from .models import Candidate, hybrid_run, make_candidate, timed_fit
from .slices import SLICE_DOCS, cold_item_candidates, sliced_truth

log = get_logger("evaluate")

METRICS_TABLE = "evaluation_metrics"
RECS_TABLE = "evaluation_recommendations"
METRICS_SCHEMA = schemas.EVALUATION_METRICS
COLD_ITEMS_PROTOCOL = """\
Cold-item protocol (split cold_items): lists are restricted to the items of the test part that
have no train interaction, so each model answers "which new item will this user take?".
Models that only know items from interactions (most-popular, ALS, ItemKNN, EASE) cannot rank
them and score 0 by construction; content-only and the hybrid rank them from text.
"""


def test_users(truth: DataFrame, max_users: int | None, seed: int) -> DataFrame:
    """Users with a relevant test row; with ``max_users``, a deterministic hash sample."""
    users = truth.filter(F.col("part") == "test").filter("is_positive").select("user_idx").distinct()
    if max_users:
        users = users.orderBy(F.xxhash64(F.lit(seed), "user_idx")).limit(max_users)
    return users


def metric_rows(values: dict[str, float], slice_name: str) -> list[tuple[str, str, int | None, float, int]]:
    """{"ndcg@10": v, "mrr": w, "n_users": n} -> (slice, metric, k, value, n_users) rows."""
    n_users = int(values.get("n_users", 0))
    rows = []
    for name, value in values.items():
        if name == "n_users":
            continue
        metric, _, k = name.partition("@")
        rows.append((slice_name, metric, int(k) if k else None, float(value), n_users))
    return rows


def judge(recs: DataFrame, truth: DataFrame, split: DataFrame, cfg: Config, n_items: int,
          item_vectors: DataFrame | None) -> list[tuple[str, str, int | None, float, int]]:
    """Every slice's ranking metrics, plus beyond-accuracy metrics over all evaluated users."""
    ec = cfg.evaluation
    per_slice = ranking_metrics_by(recs, truth, ec.ks, "slice", ec.graded)
    rows = [row for name, values in sorted(per_slice.items()) for row in metric_rows(values, name)]
    n_all = int(per_slice.get("all", {}).get("n_users", 0))
    extra = beyond_accuracy(recs, split, sorted(set(ec.ks)), n_items, item_vectors)
    rows += [(slc, metric, k, value, n_all) for slc, metric, k, value, _ in metric_rows(extra, "all")]
    return rows


def training_curves(candidates: list[Candidate], cfg: Config) -> pd.DataFrame:
    """Per-epoch metrics of models trained elsewhere (the hybrid's MLflow run)."""
    import mlflow

    frames = []
    client = mlflow.tracking.MlflowClient()
    for c in candidates:
        run_id = c.info.get("run_id")
        if not run_id:
            continue
        for key in ("loss", *(mlflow_name(f"{m}@{cfg.train.recall_k}") for m in ("recall", "ndcg"))):
            history = client.get_metric_history(run_id, key)
            name = key if key == "loss" else f"val_{key}"
            frames.append(pd.DataFrame({"model": c.name, "epoch": [m.step for m in history], "metric": name,
                                        "value": [m.value for m in history]}))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "epoch", "metric",
                                                                                        "value"])


def mlflow_key(*parts: str) -> str:
    """MLflow metric names: letters, digits and ``_-./ `` only."""
    text = ".".join(parts)
    return text.replace("@", "_at_").replace(":", "_").replace("+", "plus")


def log_to_mlflow(cfg: Config, eval_id: str, metrics: pd.DataFrame, candidates: list[Candidate],
                  report: Path, protocol: str) -> str:
    import mlflow

    from ..model.registry import mlflow_setup

    mlflow_setup(cfg.train.mlflow_uri, cfg.train.experiment)
    tags = {"dataset": cfg.data.dataset, "split": cfg.evaluation.split, "kind": "evaluation", "eval_id": eval_id}
    with mlflow.start_run(run_name=f"evaluate-{cfg.evaluation.split}", tags=tags) as run:
        mlflow.log_params({"models": ",".join(c.name for c in candidates), "ks": ",".join(map(str, cfg.evaluation.ks)),
                           "split": cfg.evaluation.split, "graded": cfg.evaluation.graded})
        mlflow.log_params({f"{c.name}.{key}": str(value)[:500] for c in candidates for key, value in c.info.items()})
        values = {}
        for r in metrics.itertuples():
            if not math.isfinite(r.value):
                continue
            name = r.metric if pd.isna(r.k) else f"{r.metric}@{int(r.k)}"
            values[mlflow_key(r.model, r.slice, name)] = r.value
        values.update({mlflow_key(c.name, "train_seconds"): c.train_seconds for c in candidates
                       if c.train_seconds is not None})
        mlflow.log_metrics(values)
        mlflow.log_artifact(str(report), artifact_path="report")
        mlflow.log_text(metrics.to_csv(index=False), "metrics.csv")
        mlflow.log_text(protocol, "protocol.txt")
        return run.info.run_id


def protocol_text(cfg: Config, split: str, n_users: int, n_items: int, restricted: bool) -> str:
    ec = cfg.evaluation
    head = (f"Split: split_{split} (its train part fits every model; its test part is the truth).\n"
            f"Test users evaluated: {n_users}"
            + (f" (a hash sample of at most {ec.max_users})" if ec.max_users else "") + ".\n"
            f"Catalogue: {n_items} items; every model ranks all of them"
            + (" that are cold (see below)" if restricted else "") + ", train items of the user excluded.\n"
            f"Ks: {', '.join(map(str, sorted(ec.ks)))}; graded NDCG: {ec.graded}.\n"
            "Beyond accuracy (slice all): coverage = share of the catalogue in some top-K; novelty = mean\n"
            "-log2(share of train users who had the item); popularity bias = mean train popularity of the\n"
            "top-K over the catalogue's mean; ild = mean pairwise cosine distance of item text embeddings.\n"
            "No model here predicts ratings, so RMSE/MAE are not reported.\n\n")
    return head + (COLD_ITEMS_PROTOCOL + "\n" if restricted else "") + PROTOCOL + "\n" + \
        SLICE_DOCS.format(cold=ec.cold_user_max_train)


def crown_champion(cfg: Config, lake: Lake, metrics: pd.DataFrame, fitted: list[Candidate]) -> str | None:
    """Registers the model with the best NDCG@10 on slice "all" as ``champion``; returns its name.

    Not called on cold_items: lists there are ranked among a restricted shelf, so a winner
    there says nothing about ranking the whole catalogue, which is what serving does.
    """
    ks = cfg.evaluation.ks
    k = 10 if 10 in ks else min(ks, key=lambda v: abs(v - 10))
    runs = {c.name: c.info["run_id"] for c in fitted if c.info.get("run_id")}
    ndcg = metrics[(metrics["slice"] == "all") & (metrics["metric"] == "ndcg") & (metrics["k"] == k)
                   & metrics["model"].isin(list(runs))]
    if ndcg.empty:
        return None
    best = ndcg.loc[ndcg["value"].idxmax()]
    register_champion(cfg, lake, runs[best["model"]], best["model"], float(best["value"]))
    log_fields(log, "champion", model=best["model"], metric=f"ndcg@{k}", value=round(float(best["value"]), 4),
               run_id=runs[best["model"]])
    return str(best["model"])


def run_evaluate(cfg: Config, spark: SparkSession, lake: Lake, report_path: str | Path | None = None
                 ) -> dict[str, Any]:
    """Fits and judges every model in ``cfg.evaluation.models``; returns where everything went."""
    from .report import write_report

    ec = cfg.evaluation
    split_name = ec.split
    table = f"split_{split_name}"
    if not lake.exists(table):
        raise ValueError(f"no table {table}: run `sparkrec features` (split names: temporal_loo, global_time, "
                         "random, stratified, cold_items, cold_users)")
    if "hybrid" in ec.models:  # before any write: a hybrid of another lake or catalogue is refused
        checked_run(hybrid_run(cfg, split_name, lake), lake,
                    "evaluation.hybrid_run_id" if ec.hybrid_run_id else "evaluation.models[hybrid]")
    provenance = data_provenance(lake, split_name)  # what the baselines fitted here read
    eval_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    started_at = dt.datetime.now(dt.UTC)
    split = lake.read(table).cache()
    users = test_users(split, ec.max_users, cfg.train.seed).cache()
    truth = sliced_truth(split.join(users, "user_idx"), ec.cold_user_max_train, ec.activity_buckets).cache()
    n_items = int(lake.read("item_index").count())
    n_users = users.count()
    restricted = split_name == "cold_items"
    candidates_items = (np.array([r[0] for r in cold_item_candidates(split).collect()], dtype=np.int64)
                        if restricted else None)  # the cold shelf: a small share of the catalogue
    item_vectors = lake.read("item_embeddings").select("item_idx", "vector") if lake.exists("item_embeddings") \
        else None
    k_max = max(ec.ks)
    rows: list[tuple] = []
    fitted: list[Candidate] = []
    first = True
    try:
        for name in ec.models:
            candidate = make_candidate(name, cfg, lake, split_name)
            fit_seconds = timed_fit(candidate, split)
            recs = candidate.model.recommend(users, k_max, exclude_seen=True, candidates=candidates_items)
            recs = recs.select(F.lit(eval_id).alias("eval_id"), F.lit(name).alias("model"), "user_idx", "item_idx",
                               F.col("rank").cast("int"), F.col("score").cast("double"))
            commit = lake.overwrite(RECS_TABLE, recs) if first else lake.append(RECS_TABLE, recs)
            first = False
            if name != "hybrid":  # the train stage saved the hybrid; a baseline is saved here, fitted
                candidate.info["run_id"] = log_recommender(candidate.model, cfg, lake, split_name, provenance)
            candidate.model.release()
            stored = lake.read(RECS_TABLE, commit.version).filter(
                (F.col("eval_id") == eval_id) & (F.col("model") == name)).cache()
            version = str(candidate.info.get("run_id", eval_id))
            for slc, metric, k, value, n in judge(stored, truth, split, cfg, n_items, item_vectors):
                rows.append((eval_id, cfg.data.dataset, split_name, name, slc, metric, k, value, n,
                             candidate.train_seconds, version, started_at))
            stored.unpersist()
            fitted.append(candidate)
            log_fields(log, "model evaluated", model=name, fit_seconds=round(fit_seconds, 1),
                       train_seconds=round(candidate.train_seconds or 0.0, 1), recs=commit.rows_written)
    finally:
        for df in (truth, users, split):
            df.unpersist()

    metrics_df = spark.createDataFrame(rows, METRICS_SCHEMA)
    commit = lake.append(METRICS_TABLE, metrics_df) if lake.exists(METRICS_TABLE) \
        else lake.overwrite(METRICS_TABLE, metrics_df)
    metrics = pd.DataFrame(rows, columns=METRICS_SCHEMA.names)
    protocol = protocol_text(cfg, split_name, n_users, n_items, restricted)
    meta = {"dataset": cfg.data.dataset, "split": split_name, "evaluation id": eval_id,
            "generated at": started_at.isoformat(timespec="seconds"), "test users": n_users, "catalogue items": n_items,
            **{f"{c.name} tuning": str(c.info) for c in fitted if c.info}}
    path = Path(report_path) if report_path else Path(ec.report_dir) / cfg.namespace / f"{split_name}-{eval_id}.html"
    write_report(path, metrics, training_curves(fitted, cfg), meta, protocol)
    run_id = log_to_mlflow(cfg, eval_id, metrics, fitted, path, protocol)
    summary = {"eval_id": eval_id, "models": [c.name for c in fitted], "users": n_users, "rows": len(rows),
               "metrics_table_version": commit.version, "report": str(path), "mlflow_run_id": run_id,
               "champion": None if restricted else crown_champion(cfg, lake, metrics, fitted)}
    log_fields(log, "evaluation written", **summary)
    return summary


def summary_table(metrics: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Models x chosen metrics (e.g. ["ndcg@10", "recall@20"]) on slice "all", plus train seconds."""
    allrows = metrics[metrics["slice"] == "all"].copy()
    allrows["name"] = [m if pd.isna(k) else f"{m}@{int(k)}" for m, k in zip(allrows["metric"], allrows["k"],
                                                                               strict=True)]
    wide = allrows.pivot_table(index="model", columns="name", values="value", aggfunc="first")
    seconds = allrows.groupby("model")["train_seconds"].first()
    out = wide.reindex(columns=[c for c in columns if c in wide.columns])
    out["train_seconds"] = seconds
    return out
