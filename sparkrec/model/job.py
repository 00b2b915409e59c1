"""The train stage: feature tables -> examples (Spark) -> distributed training -> MLflow.

The driver prepares everything workers need as files under the run's work directory
(catalogue, validation set) plus a Petastorm converter over the examples; workers read
their shard with ``make_torch_dataloader``. The best weights come back to the driver, which
logs config, per-epoch metrics, weights (safetensors), catalogue and item vectors to MLflow
and writes the item vectors to the ``item_vectors`` Delta table.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import schemas
from ..config import Config, config_to_dict
from ..ingest.presets import resolve_source
from ..lake import Lake
from ..logs import get_logger, log_fields
from ..text.embedding_tables import item_embeddings_table
from .blend import BlendSearch, search_blend
from .build import all_item_vectors
from .data import build_catalog, gap_scale_for, tower_inputs, training_examples
from .distributed import run_distributed
from .factors import implicit_als
from .head import (
    LinearHead,
    available_memory,
    gram_of,
    head_entries,
    head_rows,
    items_that_fit,
    side_grams,
    solve_head,
    untouched_rows,
)
from .provenance import data_provenance
from .registry import ITEM_VECTORS, load_weights, mlflow_name, mlflow_setup, save_model_dir
from .store import model_tags
from .towers import ModelSpec
from .validation import collect_eval_set, holdout_for, split_validation
from .worker import worker_main

log = get_logger("train")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def model_spec(cfg: Config, n_items: int, n_users: int, text_in: int, cat_vocab_sizes: list[int],
               genre_vocab: int) -> ModelSpec:
    m = cfg.model
    return ModelSpec(n_items=n_items, n_users=n_users, dim=m.dim, id_dim=m.id_dim, text_in=text_in,
                     text_dim=m.text_dim, cat_vocab_sizes=cat_vocab_sizes, genre_vocab=genre_vocab, cat_dim=m.cat_dim,
                     hidden=m.hidden, history=m.history, id_dropout=m.id_dropout, dropout=m.dropout,
                     user_id=m.user_id, temperature=cfg.train.temperature)


def categorical_attributes(cfg: Config) -> list[str]:
    """The source's ``categorical_fields``: item attributes the model reads as categories."""
    items = resolve_source(cfg.data).items
    return list(items.columns.categorical_fields) if items is not None else []


def training_rows(lake: Lake, split: str) -> DataFrame:
    """Split-table-shaped rows to train on: ``split_<split>``, or for ``none`` (production)
    every event as a train row, so the served model has seen everything; validation for early
    stopping is still carved out of them (:func:`split_validation`)."""
    if split == "none":
        return lake.read("events").withColumn("part", F.lit("train"))
    return lake.read(f"split_{split}")


def prepare(cfg: Config, spark: SparkSession, lake: Lake, workdir: Path) -> dict[str, Any]:
    """Everything a training run needs, computed in Spark; returns the worker params."""
    tc, n = cfg.train, cfg.model.history
    split = training_rows(lake, tc.split)
    train_pos = split.filter((F.col("part") == "train") & F.col("is_positive"))
    gap_scale = gap_scale_for(split)
    holdout = holdout_for(tc.split, tc.holdout, gap_scale != 1.0)
    fit, val_targets = split_validation(train_pos, tc.max_val_users, tc.seed, holdout, tc.val_fraction)
    fit = fit.persist()
    n_users = int(lake.read("user_index").agg(F.max("user_idx")).collect()[0][0]) + 1
    text = None
    if cfg.model.use_text and lake.exists("item_embeddings"):
        text = lake.read(item_embeddings_table(lake, tc.split)).select("item_idx", "vector")
    elif cfg.model.use_text:
        log_fields(log, "no item_embeddings table: training without text (run `sparkrec embed` first)")
    catalog = build_catalog(lake.read("item_features"), fit, n_users, text, cfg.model.cat_vocab,
                            cfg.model.use_categories, categorical_attributes(cfg))
    workdir.mkdir(parents=True, exist_ok=True)
    catalog.save(workdir / "catalog.safetensors")
    val = collect_eval_set(tower_inputs(fit, n, gap_scale), val_targets, fit)
    val.save(workdir / "val.safetensors")
    log_fields(log, "validation set", holdout=holdout, users=len(val), targets=len(val.targets))
    examples = training_examples(fit, n, gap_scale, tc.masked_share, tc.seed)
    spec = model_spec(cfg, catalog.n_items, n_users, 0 if catalog.text is None else catalog.text.shape[1],
                      catalog.cat_vocab_sizes, catalog.genre_vocab)
    return {"examples": examples, "catalog": catalog, "spec": spec, "gap_scale": gap_scale, "fit": fit,
            "train_pos": train_pos, "val": val, "holdout": holdout,
            "params": {"train": tc.model_dump(mode="json"), "spec": spec.to_dict(), "workdir": str(workdir),
                       "catalog_path": str(workdir / "catalog.safetensors"),
                       "val_path": str(workdir / "val.safetensors")}}


def examples_to_safetensors(examples: DataFrame, path: Path) -> int:
    """Training examples as one tensor file, for the in-memory feed (benchmarks, a GPU box
    without Spark). Collects to the driver: meant for datasets that fit in memory."""
    from safetensors.numpy import save_file

    pdf = examples.toPandas()
    # int32 ids: half the bytes; the feed widens them on the device (worker._to_device).
    arrays = {"user": pdf["user"].to_numpy(np.int32), "hist": np.stack(pdf["hist"].to_numpy()).astype(np.int32),
              "gaps": np.stack(pdf["gaps"].to_numpy()).astype(np.float32),
              "target": pdf["target"].to_numpy(np.int32), "weight": pdf["weight"].to_numpy(np.float32)}
    save_file(arrays, str(path))
    return len(pdf)


def quiet_petastorm() -> None:
    """petastorm 0.12 drives pyarrow 14's legacy dataset API, which warns on every call."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow\..*")


def petastorm_converter(spark: SparkSession, examples: DataFrame, workdir: Path, partitions: int) -> Any:
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    cache = (workdir / "petastorm").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache.as_uri())
    # A few large files: petastorm reads row groups, and many small files starve the loader.
    converter = make_spark_converter(examples.repartition(partitions))
    # The files come in directory-listing order, which varies between runs; readers shuffle
    # row groups from that order by seed, so a fixed order makes a training run repeatable.
    converter.file_urls = sorted(converter.file_urls)
    return converter


def run_train(cfg: Config, spark: SparkSession, lake: Lake) -> dict[str, Any]:
    import mlflow

    tc = cfg.train
    run_key = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    workdir = Path(tc.workdir) / cfg.namespace / run_key
    provenance = data_provenance(lake, tc.split)  # the catalogue and table versions prepare() reads
    prep = prepare(cfg, spark, lake, workdir)
    started = time.perf_counter()
    quiet_petastorm()
    converter = petastorm_converter(spark, prep["examples"], workdir, max(2, tc.num_workers * 2))
    params = {**prep["params"], "converter": converter, "n_examples": len(converter)}
    try:
        result = run_distributed(tc.backend, tc.num_workers, worker_main, params, tc.use_gpu, tc.local_mode)
        converter.delete()
        converter = None
        head, blend = fit_head(cfg, prep, result["state"])
        if tc.refit:
            result = refit_towers(cfg, spark, prep, workdir, result)
    finally:
        if converter is not None:
            converter.delete()
        prep["fit"].unpersist()
    seconds = time.perf_counter() - started

    mlflow_setup(tc.mlflow_uri, tc.experiment)
    with mlflow.start_run(tags={**model_tags(cfg, lake, "hybrid", tc.split, provenance),
                                "backend": tc.backend}) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in _flatten(config_to_dict(cfg)).items()
                           if k.split(".")[0] in ("model", "train", "features", "data")})
        for row in result["history"]:
            mlflow.log_metrics({mlflow_name(k): v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        mlflow.log_metrics({"best_val_recall": result["best"], "train_seconds": seconds,
                            **({"refit_epochs": result["refit_epochs"]} if "refit_epochs" in result else {}),
                            "n_examples": params["n_examples"],
                            **{f"blend_{k}": v for k, v in blend.items() if isinstance(v, float)}})
        if blend.get("trials"):
            mlflow.log_table(pd.DataFrame(blend["trials"]), "blend_trials.json")
        meta = {"run_id": run.info.run_id, "dataset": cfg.data.dataset, "split": tc.split,
                "backend": tc.backend, "workers": result["world"], "gap_scale": prep["gap_scale"],
                "history": cfg.model.history, "holdout": prep["holdout"],
                "blend": {k: v for k, v in blend.items() if k != "trials"}}
        model_dir = save_model_dir(workdir / "model", prep["spec"], result["state"], prep["catalog"], meta, head)
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        run_id = run.info.run_id
    _write_item_vectors(spark, lake, model_dir / ITEM_VECTORS, run_id)
    summary = {"run_id": run_id, "best_val_recall": result["best"], "epochs": len(result["history"]),
               "examples": params["n_examples"], "seconds": round(seconds, 1), "backend": tc.backend,
               "workers": result["world"]}
    log_fields(log, "model trained", **summary)
    print(f"trained model: MLflow run {run_id} (val recall@{tc.recall_k} = {result['best']:.4f})")
    return summary


def best_epoch(history: list[dict[str, float]], key: str) -> int:
    """The 1-based epoch early stopping kept: the first with the highest validation ``key``."""
    return 1 + max(range(len(history)), key=lambda i: (history[i][key], -i))


def refit_towers(cfg: Config, spark: SparkSession, prep: dict[str, Any], workdir: Path,
                 first: dict[str, Any]) -> dict[str, Any]:
    """``train.refit``: the towers retrained from scratch on every train row (the validation
    targets back in) for the epochs validation chose; same seed, catalogue and spec, so the
    head and blend searched with the first towers still apply."""
    tc = cfg.train
    epochs = best_epoch(first["history"], f"recall@{tc.recall_k}")
    examples = training_examples(prep["train_pos"], cfg.model.history, prep["gap_scale"], tc.masked_share, tc.seed)
    converter = petastorm_converter(spark, examples, workdir / "refit", max(2, tc.num_workers * 2))
    params = {**prep["params"], "train": {**prep["params"]["train"], "epochs": epochs}, "converter": converter,
              "n_examples": len(converter), "refit": True, "workdir": str(workdir / "refit")}
    log_fields(log, "refitting the towers on every train row", epochs=epochs, examples=params["n_examples"])
    try:
        again = run_distributed(tc.backend, tc.num_workers, worker_main, params, tc.use_gpu, tc.local_mode)
    finally:
        converter.delete()
    return {**first, "state": again["state"], "refit_epochs": epochs}


def fit_head(cfg: Config, prep: dict[str, Any], state: bytes) -> tuple[LinearHead | None, dict[str, Any]]:
    """The linear head and the blend, searched on the validation set with the trained towers,
    then the head refitted on every train row (validation targets included) with the chosen
    parameters: the search needs held-out rows, the served model should not waste them."""
    mc, tc = cfg.model, cfg.train
    if not mc.head:
        return None, {}
    available = available_memory()
    max_items = items_that_fit(mc.head_max_items, available)
    if max_items < mc.head_max_items:
        log_fields(log, "linear head capped to fit the driver's memory", head_max_items=mc.head_max_items,
                   capped_to=max_items, available_gib=round((available or 0) / 2**30, 1))
    rows = head_rows(prep["fit"], max_items, mc.head_min_count)
    if len(rows) < 2:
        log_fields(log, "no linear head: fewer than two items with enough interactions", items=len(rows))
        return None, {}
    towers = load_weights(prep["spec"], prep["catalog"], state)
    val = prep["val"]
    items = all_item_vectors(towers)
    with torch.no_grad():
        users = torch.cat([towers.user_vectors(*(torch.from_numpy(getattr(val, k)[s:s + 1024])
                                                 for k in ("users", "hist", "gaps")))
                           for s in range(0, len(val), 1024)]) if len(val) else items[:0]
    sides = side_grams(prep["catalog"], rows) if mc.head_side_information else {}
    fit_entries = head_entries(prep["fit"], rows)
    grams = {binary: gram_of(fit_entries, len(rows), binary) for binary in (False, True)}
    search = BlendSearch(val, users.numpy(), items.numpy(), grams, sides, rows)
    if mc.head_factors:
        search.factor_fit = fit_entries
        search.factor_grid = [(reg, alpha) for reg in mc.factor_regs for alpha in mc.factor_alphas]
        search.factor_rank, search.factor_iterations = mc.factor_rank, mc.factor_iterations
        if mc.cold_factors:
            search.cold_rows = untouched_rows(prep["train_pos"], prep["catalog"])
            search.item_text = prep["catalog"].text
            search.cold_ridge = mc.cold_factor_ridge
    params, w_tower, ndcg = search_blend(search, tc.blend_trials, tc.seed)
    train_entries = head_entries(prep["train_pos"], rows)
    head = solve_head(gram_of(train_entries, len(rows), bool(params["binary"])), sides, rows, params)
    if params.get("factor_weight", 0.0) > 0:
        head.factors = implicit_als(*train_entries, len(rows), mc.factor_rank,
                                    params["factor_reg"], params["factor_alpha"], mc.factor_iterations, tc.seed)
        cold = search.cold_factors(rows, head.factors)
        if cold is not None:
            head.cold_rows, head.cold_factors = search.cold_rows, cold
    blend = {"w_tower": w_tower, "val_ndcg_at_10": ndcg, "tower_only_val_ndcg_at_10": search.tower_only,
             "head_items": float(len(rows)), "cold_items": float(len(head.cold_rows) if head.scores_cold else 0),
             "cold_ridge": float(search.cold_ridge),  # predicts factors for items added later (model.grow)
             **{k: float(v) for k, v in params.items()}, "trials": search.trials}
    return head, blend


def _write_item_vectors(spark: SparkSession, lake: Lake, path: Path, run_id: str) -> None:
    import pandas as pd
    from safetensors.numpy import load_file

    vectors = load_file(str(path))["vectors"][1:]
    pdf = pd.DataFrame({"item_idx": np.arange(len(vectors), dtype=np.int32), "vector": list(vectors),
                        "model_version": run_id})
    lake.overwrite("item_vectors", spark.createDataFrame(pdf, schemas.ITEM_VECTORS))
