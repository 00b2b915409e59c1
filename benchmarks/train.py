"""Training benchmark, all in one run on one machine:

1. samples/s of the training loop fed by Petastorm vs the same loop fed from in-memory tensors,
   and with the ID tables on sparse row gradients (SparseAdam) vs dense ones (AdamW over every
   row): ``train.sparse_ids``;
2. 1 vs 2 workers on CPU with each distributed backend (TorchDistributor, Horovod), with the
   validation Recall@20 each reaches after the same number of steps per worker;
3. GPU samples/s when a CUDA device is present;
4. quality on ml-latest-small, temporal leave-last-one: the trained hybrid model vs
   most-popular, Recall@20 and NDCG@10 over all items with seen items excluded.

    python benchmarks/train.py                      # ml-latest-small (../shared/datasets)
    python benchmarks/train.py --epochs 12 --skip-scaling
    python benchmarks/train.py --dataset bookcrossing --no-text --skip-scaling --skip-quality \
        --set train.batched_feed=true
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyspark.sql import functions as F

from sparkrec.config import Config, load_config
from sparkrec.features.job import run_features
from sparkrec.ingest.job import run_ingest
from sparkrec.lake import DeltaRsLake, RunContext
from sparkrec.logs import setup_logging
from sparkrec.model.data import tower_inputs
from sparkrec.model.distributed import run_distributed
from sparkrec.model.job import (
    examples_to_safetensors,
    petastorm_converter,
    prepare,
    quiet_petastorm,
    run_train,
)
from sparkrec.model.registry import load_model
from sparkrec.model.validation import collect_eval_set, ranking_quality
from sparkrec.model.worker import ranking_at_k, worker_main
from sparkrec.session import get_spark

REPO = Path(__file__).resolve().parents[1]


def _one_epoch(cfg: Config, params: dict[str, Any], backend: str, workers: int, steps: int) -> dict[str, float]:
    train = {**params["train"], "epochs": 1, "num_workers": workers, "backend": backend, "progress": False,
             "steps_per_epoch": steps}
    result = run_distributed(backend, workers, worker_main, {**params, "train": train})
    return result["history"][0]


def _alternated(cfg: Config, ways: dict[str, dict[str, Any]], rounds: int, steps: int) -> dict[str, float]:
    """samples/s of each way, median of ``rounds`` rounds taken in turn (this machine's load
    drifts within a run, so the ways share it); prints each way's rounds."""
    runs: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(rounds):
        for way, way_params in ways.items():
            runs[way].append(_one_epoch(cfg, way_params, "local", 1, steps)["samples_per_s"])
    medians = {way: float(np.median(r)) for way, r in runs.items()}
    for way, r in runs.items():
        print(f"{way:<12}{medians[way]:>11,.0f} samples/s  (rounds: {', '.join(f'{x:,.0f}' for x in r)})")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="movielens", choices=["movielens", "sample", "bookcrossing"])
    parser.add_argument("--epochs", type=int, default=6, help="max epochs of the quality run (early stopping)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the feed comparison")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-quality", action="store_true", help="throughput only (sections 1-3)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.batched_feed=true")
    parser.add_argument("--no-text", action="store_true", help="train without item text embeddings")
    args = parser.parse_args()
    setup_logging("WARNING")
    quiet_petastorm()
    work = Path(tempfile.mkdtemp(prefix="sparkrec-train-bench-"))
    cfg = load_config(REPO / "conf" / "local.yaml", [
        f"lake.root={work / 'lake'}", f"data.dataset={args.dataset}", "logging.level=WARNING",
        f"train.workdir={work / 'train'}", f"train.mlflow_uri={work / 'mlruns'}", "train.progress=false",
        f"train.epochs={args.epochs}", "train.split=temporal_loo", *args.set])
    spark = get_spark(cfg.spark)
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="bench"))
    t0 = time.perf_counter()
    run_ingest(cfg, spark, lake)
    run_features(cfg, spark, lake)
    if not args.no_text:
        from sparkrec.text import run_embed

        run_embed(cfg, spark, lake)
    else:
        cfg.model.use_text = False
    print(f"data ready (ingest + features{'' if args.no_text else ' + embed'}): {time.perf_counter() - t0:.0f} s")

    prep = prepare(cfg, spark, lake, work / "prep")
    params = prep["params"]
    n_mem = examples_to_safetensors(prep["examples"], work / "examples.safetensors")
    converter = petastorm_converter(spark, prep["examples"], work / "prep", 4)
    feed = {**params, "converter": converter, "n_examples": len(converter)}
    mem = {**params, "converter": None, "memory_path": str(work / "examples.safetensors"), "n_examples": n_mem}

    print(f"\n== 1. data feed: {args.steps} steps of batch {cfg.train.batch_size}, one worker "
          f"({len(converter):,} examples) ==")
    feeds = _alternated(cfg, {"petastorm": feed, "in-memory": mem}, args.rounds, args.steps)
    print(f"ratio petastorm / in-memory (medians): {feeds['petastorm'] / feeds['in-memory']:.2f} (goal >= 0.8)")

    print(f"\n== 1b. ID tables ({params['spec']['n_items']:,} items, {params['spec']['n_users']:,} users): "
          f"sparse row gradients + SparseAdam vs dense + AdamW, Petastorm feed, one worker ==")
    ids = _alternated(cfg, {way: {**feed, "train": {**params["train"], "sparse_ids": way == "sparse"}}
                            for way in ("dense", "sparse")}, args.rounds, args.steps)
    print(f"ratio sparse / dense (medians): {ids['sparse'] / ids['dense']:.2f}")

    if not args.skip_scaling:
        print(f"\n== 2. workers on CPU: {args.steps} steps per worker, Petastorm feed ==")
        print(f"{'backend':<18}{'workers':>8}{'samples/s':>12}{'epoch s':>9}{'val recall@20':>15}")
        backends = ["torchdistributor"]
        try:
            import horovod.torch  # noqa: F401

            backends.append("horovod")
        except ImportError:
            print("(horovod not installed: scripts/build_horovod.sh)")
        for backend in backends:
            for workers in (1, 2):
                row = _one_epoch(cfg, feed, backend, workers, args.steps)
                print(f"{backend:<18}{workers:>8}{row['samples_per_s']:>12,.0f}{row['epoch_seconds']:>9.1f}"
                      f"{row['recall@20']:>15.4f}")
    print("\n== 3. GPU ==")
    if torch.cuda.is_available():
        gpu = {**params["train"], "use_gpu": True, "epochs": 1, "progress": False, "steps_per_epoch": args.steps}
        row = run_distributed("local", 1, worker_main, {**feed, "train": gpu})["history"][0]
        name = torch.cuda.get_device_name()
        print(f"{name}: {row['samples_per_s']:,.0f} samples/s, epoch {row['epoch_seconds']:.1f} s")
    else:
        print("no CUDA device on this machine: GPU throughput not measured")
    converter.delete()
    if args.skip_quality:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
        return

    print(f"\n== 4. quality: {args.dataset}, temporal leave-last-one, all items ranked, seen items excluded ==")
    started = time.perf_counter()
    run = run_train(cfg, spark, lake)
    train_s = time.perf_counter() - started
    split = lake.read("split_temporal_loo")
    train_pos = split.filter((F.col("part") == "train") & F.col("is_positive"))
    test = split.filter((F.col("part") == "test") & F.col("is_positive")).select("user_idx", "item_idx")
    loaded = load_model(run["run_id"], cfg.train.mlflow_uri)
    gap_scale = float(loaded.meta["gap_scale"])
    test_set = collect_eval_set(tower_inputs(train_pos, cfg.model.history, gap_scale), test, train_pos)
    # The towers alone: this benchmark times and checks training; the blended hybrid (towers +
    # linear head) is judged against every baseline by benchmarks/quality.py.
    hybrid = {**ranking_at_k(loaded.model, test_set, 10), **ranking_at_k(loaded.model, test_set, 20)}
    counts = np.zeros(loaded.spec.n_items + 1, dtype=np.float32)
    pop = train_pos.groupBy("item_idx").count().toPandas()
    counts[pop["item_idx"].to_numpy() + 1] = pop["count"].to_numpy()
    popular = {}
    for k in (10, 20):
        recall, ndcg = ranking_quality(np.tile(counts, (len(test_set), 1)), test_set, 0, k)
        popular.update({f"recall@{k}": float(recall.mean()), f"ndcg@{k}": float(ndcg.mean())})
    print(f"test users: {len(test_set.users):,}; hybrid trained {run['epochs']} epochs in {train_s:.0f} s "
          f"(MLflow run {run['run_id']})")
    print(f"{'model':<14}{'Recall@20':>11}{'NDCG@10':>10}{'Recall@10':>11}{'NDCG@20':>10}")
    for name, m in (("most-popular", popular), ("towers", hybrid)):
        print(f"{name:<14}{m['recall@20']:>11.4f}{m['ndcg@10']:>10.4f}{m['recall@10']:>11.4f}{m['ndcg@20']:>10.4f}")
    print(f"towers / most-popular: Recall@20 x{hybrid['recall@20'] / max(popular['recall@20'], 1e-9):.2f}, "
          f"NDCG@10 x{hybrid['ndcg@10'] / max(popular['ndcg@10'], 1e-9):.2f}")

    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
