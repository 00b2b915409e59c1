"""Quality benchmark: every model x every metric, one evaluator, on both datasets, over seeds.

For each dataset this runs the real pipeline (ingest -> features -> embed -> train the hybrid
on the benchmark's split) and then the evaluate stage, which fits and tunes every baseline on
the same train part and judges all models on the same test rows:

* ``stratified`` (the MS Recommenders protocol: per user, a random 75% of events in train, all
  items ranked, train items removed, k=10), once per split seed (``--seeds``), on
  ml-latest-small and on Book-Crossing's 20-core (users and books with at least 20
  interactions: the usual published protocol for BX, and what a dense EASE inverse and a
  2-core ALS grid can take). Mean and standard deviation over seeds are printed;
* ml-latest-small, temporal leave-last-one (split_temporal_loo), seed-free;
* the cold-item protocol (split_cold_items: 5% of items held out with all their
  interactions; lists ranked among those items only), on ml-latest-small.

Every choice (baseline grids, the hybrid's head and blend, early stopping) is made on a
validation part carved out of train; test rows are touched once, by the evaluator. Results go
to ``--json`` and every report is written as HTML under --out.

    python benchmarks/quality.py                                  # everything (about an hour on 2 cores)
    python benchmarks/quality.py --datasets movielens --seeds 42 --protocols stratified
    python benchmarks/quality.py --combine seed42.json seeds43-44.json --json all.json

``--combine`` merges the stratified results of runs made separately (one seed per run, say,
on a machine that cannot hold a long run, or the hybrid re-run after a change beside the
baselines' earlier run of the same seeds: a later file's model and seed replace an earlier
one's) into one mean +- std per model, and re-prints the goals; the other protocols are
carried over from the files as they are.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from sparkrec.config import Config, load_config  # noqa: E402
from sparkrec.evaluation.job import run_evaluate, summary_table  # noqa: E402
from sparkrec.features.job import run_features  # noqa: E402
from sparkrec.ingest.job import run_ingest  # noqa: E402
from sparkrec.lake import DeltaRsLake, RunContext  # noqa: E402
from sparkrec.logs import setup_logging  # noqa: E402
from sparkrec.model.job import quiet_petastorm, run_train  # noqa: E402
from sparkrec.session import get_spark  # noqa: E402
from sparkrec.text import run_embed  # noqa: E402

COLUMNS = ["ndcg@10", "recall@20", "precision@10", "map@10", "hitrate@10", "mrr", "coverage@20", "novelty@10",
           "popularity_bias@10", "ild@10"]
BASELINES = ["most_popular", "als", "itemknn", "ease", "content_only"]


# --------------------------------------------------------------------------- Book-Crossing core
def _fields(line: str) -> list[str]:
    return next(csv.reader(io.StringIO(line), delimiter=";", quotechar='"', escapechar="\\"), [])


def k_core(pairs: list[tuple[str, str]], k: int) -> set[tuple[str, str]]:
    """Pairs whose user and item both keep >= k pairs, iterated until nothing changes."""
    kept = set(pairs)
    while True:
        users = Counter(u for u, _ in kept)
        items = Counter(i for _, i in kept)
        smaller = {(u, i) for u, i in kept if users[u] >= k and items[i] >= k}
        if len(smaller) == len(kept):
            return kept
        kept = smaller


def bookcrossing_core(source: Path, target: Path, k: int) -> dict[str, int]:
    """Copies the three BX files keeping only the k-core's lines, byte for byte as they were,
    so the ingest stage sees the real format (Latin-1, quoting, escapes) and not a re-export."""
    target.mkdir(parents=True, exist_ok=True)
    enc = "ISO-8859-1"
    ratings = (source / "BX-Book-Ratings.csv").read_text(encoding=enc).splitlines(keepends=True)
    parsed = [(_fields(line)[:2], line) for line in ratings[1:]]
    core = k_core([(f[0], f[1]) for f, _ in parsed if len(f) == 2], k)
    users, items = {u for u, _ in core}, {i for _, i in core}
    kept = [line for f, line in parsed if len(f) == 2 and (f[0], f[1]) in core]
    (target / "BX-Book-Ratings.csv").write_text(ratings[0] + "".join(kept), encoding=enc)
    for name, keys in (("BX-Books.csv", items), ("BX-Users.csv", users)):
        lines = (source / name).read_text(encoding=enc).splitlines(keepends=True)
        body = [line for line in lines[1:] if (f := _fields(line)) and f[0] in keys]
        (target / name).write_text(lines[0] + "".join(body), encoding=enc)
    for extra in source.glob("LICENSE*"):
        shutil.copy(extra, target / extra.name)
    return {"ratings": len(kept), "users": len(users), "books": len(items)}


# --------------------------------------------------------------------------- one dataset
def prepared(spark: Any, cfg: Config) -> tuple[DeltaRsLake, dict[str, float]]:
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="bench-quality"))
    times = {}
    for name, stage in (("ingest", run_ingest), ("features", run_features), ("embed", run_embed)):
        start = time.perf_counter()
        stage(cfg, spark, lake)
        times[name] = time.perf_counter() - start
    return lake, times


def evaluate_split(spark: Any, cfg: Config, lake: DeltaRsLake, split: str, models: list[str], out: Path
                   ) -> pd.DataFrame:
    cfg = cfg.model_copy(deep=True)
    cfg.train.split = cfg.evaluation.split = split
    cfg.evaluation.models = models  # type: ignore[assignment]
    if "hybrid" in models:
        run_train(cfg, spark, lake)
    summary = run_evaluate(cfg, spark, lake, out / f"{cfg.namespace}-{split}.html")
    print(f"report: {summary['report']}")
    return lake.read("evaluation_metrics").filter(F.col("eval_id") == summary["eval_id"]).toPandas()


def print_table(title: str, metrics: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    table = summary_table(metrics, columns)
    order = ["hybrid", *BASELINES]
    table = table.reindex([m for m in order if m in table.index])
    print(f"\n== {title} ==")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    return table


def print_slices(metrics: pd.DataFrame, metric: str, k: int) -> None:
    rows = metrics[(metrics["metric"] == metric) & (metrics["k"] == k)]
    wide = rows.pivot_table(index="model", columns="slice", values="value", aggfunc="first")
    users = rows.groupby("slice")["n_users"].max()
    wide.columns = [f"{c} (n={users[c]})" for c in wide.columns]
    print(f"\n{metric}@{k} by slice:")
    print(wide.to_string(float_format=lambda v: f"{v:.4f}"))


def verdict(table: pd.DataFrame, rivals: list[str], columns: list[str]) -> list[str]:
    """One line per goal metric: does the hybrid beat every rival, and by how much."""
    lines = []
    present = [r for r in rivals if r in table.index]
    for col in columns:
        if "hybrid" not in table.index or not present:
            continue
        best = table.loc[present, col].idxmax()
        ours, theirs = table.loc["hybrid", col], table.loc[best, col]
        word = "BEATS" if ours > theirs else "DOES NOT BEAT"
        rel = (ours / theirs - 1.0) * 100 if theirs else float("inf")
        lines.append(f"  hybrid {word} every rival on {col}: {ours:.4f} vs best rival {best} {theirs:.4f} "
                     f"({rel:+.1f}%)")
    return lines


def stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "values": [float(v) for v in arr]}


def seeded_summary(tables: list[pd.DataFrame], columns: list[str]) -> dict[str, dict[str, Any]]:
    """{model: {metric: {mean, std, values}}} over the seeds' summary tables."""
    out: dict[str, dict[str, Any]] = {}
    for model in tables[0].index:
        out[model] = {c: stats([t.loc[model, c] if c in t.columns else np.nan for t in tables if model in t.index])
                      for c in columns}
    return out


def print_seeded(title: str, summary: dict[str, dict[str, Any]], columns: list[str]) -> None:
    print(f"\n== {title} (mean +- std over seeds) ==")
    order = [m for m in ["hybrid", *BASELINES] if m in summary]
    width = max(len(m) for m in order)
    print(" " * width + "".join(f"{c:>20}" for c in columns))
    for m in order:
        print(f"{m:<{width}}" + "".join(f"{summary[m][c]['mean']:>12.4f} +-{summary[m][c]['std']:.4f}"
                                         for c in columns))


def seeded_verdict(summary: dict[str, dict[str, Any]], rivals: list[str], metric: str, goal: float) -> str:
    present = [r for r in rivals if r in summary]
    if "hybrid" not in summary or not present:
        return f"  {metric}: no hybrid-vs-baseline comparison (--models left one side out)"
    best = max(present, key=lambda r: summary[r][metric]["mean"])
    ours, theirs = summary["hybrid"][metric]["mean"], summary[best][metric]["mean"]
    ratio = ours / theirs if theirs else float("inf")
    word = "MEETS" if ratio >= goal else "MISSES"
    return (f"  hybrid {word} the {goal:.2f}x goal on {metric}: {ours:.4f} vs best baseline {best} {theirs:.4f} "
            f"= {ratio:.3f}x")


def combine(paths: list[Path]) -> tuple[dict[str, Any], list[str]]:
    """Concatenates each model's per-seed values across result files and recomputes the stats.
    A model and seed in a later file replace the earlier file's (said on stdout): that is how a
    model re-run after a change meets the baselines' earlier run of the same seeds."""
    merged: dict[str, Any] = {}
    by_seed: dict[tuple[str, str, str], dict[int, float]] = {}  # (dataset, model, metric) -> seed -> value
    for path in paths:
        for dataset, protocols in json.loads(path.read_text()).items():
            into = merged.setdefault(dataset, {})
            for protocol, result in protocols.items():
                if protocol != "stratified":
                    into[protocol] = json.loads(json.dumps(result))
                    continue
                for model, metrics in result["models"].items():
                    for metric, st in metrics.items():
                        values = by_seed.setdefault((dataset, model, metric), {})
                        if metric == "ndcg@10" and (again := set(values) & set(result["seeds"])):
                            print(f"{path}: replaces {dataset} {model} seed(s) {sorted(again)}")
                        values.update(zip(result["seeds"], st["values"], strict=True))
    for (dataset, model, metric), values in by_seed.items():
        strat = merged[dataset].setdefault("stratified", {"seeds": [], "models": {}})
        strat["seeds"] = sorted(set(strat["seeds"]) | set(values))
        strat["models"].setdefault(model, {})[metric] = stats([values[seed] for seed in sorted(values)])
    verdicts = []
    for dataset, protocols in merged.items():
        if "stratified" in protocols:
            summary, seeds = protocols["stratified"]["models"], protocols["stratified"]["seeds"]
            print_seeded(f"{dataset}, split_stratified, seeds {seeds}", summary, ["ndcg@10", "recall@20"])
            verdicts.append(f"{dataset} (stratified 75/25, {len(seeds)} seeds):")
            verdicts += [seeded_verdict(summary, BASELINES, m, 1.05) for m in ("ndcg@10", "recall@20")]
    return merged, verdicts


def run_dataset(dataset: str, args: argparse.Namespace, work: Path, results: dict[str, Any]
                ) -> tuple[dict[str, Any], list[str]]:
    """Runs the protocols in order of what the goals need most (a long run may be cut short),
    writing ``--json`` after each one."""
    overrides = [f"lake.root={work / 'lake'}", f"data.dataset={dataset}", "logging.level=WARNING",
                 f"train.workdir={work / 'train'}", f"train.mlflow_uri={work / 'mlruns'}",
                 "train.progress=false", f"train.epochs={args.epochs}", f"train.refit={str(args.refit).lower()}",
                 *args.set]
    if dataset == "bookcrossing":
        core = bookcrossing_core(args.shared / "book-crossing", work / f"bx-core{args.bx_core}", args.bx_core)
        print(f"Book-Crossing {args.bx_core}-core: {core['ratings']:,} ratings, {core['users']:,} users, "
              f"{core['books']:,} books")
        # EASE's inverse is per lambda over ~4k items; ALS's grid is 8 points, not 18.
        overrides += [f"data.paths.bookcrossing={work / f'bx-core{args.bx_core}'}",
                      "evaluation.als_reg_params=[0.1,0.3]", "evaluation.als_alphas=[1.0,3.0]",
                      "evaluation.ease_lambdas=[100,300,1000,3000]"]
    elif dataset == "movielens":
        overrides.append(f"data.paths.movielens={args.shared / 'ml-latest-small'}")
    result: dict[str, Any] = results.setdefault(dataset, {})
    verdicts: list[str] = []

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))

    cfg = load_config(REPO / "conf" / "local.yaml", overrides)
    spark = get_spark(cfg.spark)
    protocols = [p for p in args.protocols if dataset == "movielens" or p == "stratified"]
    if "stratified" in protocols:
        tables = []
        for seed in args.seeds:
            # A random holdout for tuning, as the test part is random; the split is re-cut per seed.
            seeded = load_config(REPO / "conf" / "local.yaml",
                                 [*overrides, f"features.splits.seed={seed}", "evaluation.baseline_holdout=random"])
            lake, times = prepared(spark, seeded)
            print(f"\n#### {dataset}, seed {seed}: data ready in {sum(times.values()):.0f} s "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})")
            metrics = evaluate_split(spark, seeded, lake, "stratified", args.models, args.out)
            tables.append(print_table(f"{dataset}, split_stratified, seed {seed}: slice all", metrics, COLUMNS))
            print_slices(metrics, "ndcg", 10)
            summary = seeded_summary(tables, [*COLUMNS, "train_seconds"])
            result["stratified"] = {"seeds": list(args.seeds[:len(tables)]), "models": summary}
            save()  # after every seed: a run cut short still leaves its numbers
        print_seeded(f"{dataset}, split_stratified", summary, ["ndcg@10", "recall@20"])
        verdicts.append(f"{dataset} (stratified 75/25, {len(args.seeds)} seeds):")
        verdicts += [seeded_verdict(summary, BASELINES, m, 1.05) for m in ("ndcg@10", "recall@20")]
        print("\n".join(verdicts[-3:]), flush=True)
    lake, _ = prepared(spark, cfg) if set(protocols) - {"stratified"} else (None, None)
    if "cold_items" in protocols:
        cold = evaluate_split(spark, cfg, lake, "cold_items", ["hybrid", "content_only", "most_popular"], args.out)
        table = print_table(f"{dataset}, split_cold_items: ranked among held-out items only", cold, COLUMNS)
        result["cold_items"] = {"models": seeded_summary([table], [*COLUMNS, "train_seconds"])}
        save()
        ratio = table.loc["hybrid", "recall@20"] / max(table.loc["content_only", "recall@20"], 1e-12)
        verdicts.append(f"{dataset} (cold items): hybrid Recall@20 = {ratio:.2f}x content-only "
                        f"({'MEETS' if ratio >= 2 else 'MISSES'} the 2x goal)")
        print(verdicts[-1], flush=True)
    if "temporal_loo" in protocols:
        metrics = evaluate_split(spark, cfg, lake, "temporal_loo", args.models, args.out)
        table = print_table(f"{dataset}, split_temporal_loo: slice all", metrics, COLUMNS)
        result["temporal_loo"] = {"models": seeded_summary([table], [*COLUMNS, "train_seconds"])}
        save()
        verdicts.append(f"{dataset} (temporal leave-last-one):")
        verdicts += verdict(table, BASELINES, ["ndcg@10", "recall@20"])
        print("\n".join(verdicts[-3:]), flush=True)
    return result, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["movielens", "bookcrossing"],
                        choices=["movielens", "bookcrossing", "sample"])
    parser.add_argument("--protocols", nargs="+", default=["stratified", "cold_items", "temporal_loo"],
                        choices=["stratified", "cold_items", "temporal_loo"],
                        help="temporal_loo and cold_items run on ml-latest-small only")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44], help="split seeds (stratified)")
    parser.add_argument("--models", nargs="+", default=["hybrid", *BASELINES], choices=["hybrid", *BASELINES],
                        help="stratified and temporal_loo: the models to train and judge (e.g. only the hybrid "
                             "after a training change; compare with an earlier full run's baselines)")
    parser.add_argument("--refit", action="store_true",
                        help="train.refit: retrain the towers on all train rows for the epochs validation chose")
    parser.add_argument("--epochs", type=int, default=8, help="max hybrid epochs (early stopping on validation)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (e.g. embed.runtime=onnx embed.quantize=int8: "
                             "the same protocols with another text encoder)")
    parser.add_argument("--bx-core", type=int, default=20, help="Book-Crossing k-core")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "quality")
    parser.add_argument("--json", type=Path, default=REPO / "reports" / "quality" / "quality.json")
    parser.add_argument("--work", type=Path, default=None, help="lake + MLflow (default: a temporary directory)")
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="merge earlier --json outputs (runs of different seeds) instead of running")
    args = parser.parse_args()
    if args.combine:
        merged, verdicts = combine(args.combine)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(merged, indent=2))
        print("\n== goals ==\n" + "\n".join(verdicts) + f"\nresults: {args.json}")
        return
    setup_logging("WARNING")
    quiet_petastorm()
    work = args.work or Path(tempfile.mkdtemp(prefix="sparkrec-quality-"))
    results: dict[str, Any] = {}
    verdicts: list[str] = []
    for dataset in args.datasets:
        _, lines = run_dataset(dataset, args, work, results)
        verdicts += lines
    print("\n== goals ==")
    print("\n".join(verdicts))
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
