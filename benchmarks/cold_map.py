"""Cold items from text to factors, judged on pseudo-cold carves of train only.

Why this exists: cold-item Recall@20 must reach 2x content-only, and the towers alone stood at
1.42x. The factor term's answer (:func:`sparkrec.model.factors.content_factors`: a ridge map from
an item's text vector to its implicit-ALS factors) has one free parameter, the ridge, and a
design question (does it need the text score beside it?). Both are decided here on validation:
5% of the *train* items of ``split_cold_items`` are carved out with all their train events, as
the protocol does to its test items, and their text is re-embedded as a new item's would be
(the template with no tags: nobody has tagged a new item). For each carve seed it prints
Recall@20 and NDCG@10 over the carved items only, for content-only (the cosine of the user's
weighted mean text vector, as the baseline), the predicted factors alone at each ridge and ALS
regularisation, and the predicted factors plus the content score (both z-scored per user).

Nothing is read from the test part. Run it on the lake ``benchmarks/quality.py --work DIR
--protocols cold_items`` leaves:

    python benchmarks/cold_map.py DIR/lake/movielens --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from deltalake import DeltaTable
from head_variants import zscore  # a sibling script: benchmarks/ is on the path when run
from scipy import sparse

from sparkrec.baselines.content import unit_rows
from sparkrec.config import EmbedConfig
from sparkrec.model.factors import content_factors, fold_in, implicit_als

RIDGES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # relative to the mean diagonal, as the model's
ALS_REGS = (0.1, 0.3, 1.0)  # model.factor_regs' default grid, alpha 1 and rank 64 (the model's)
CONTENT_SHARES = (0.5, 1.0)
CARVE_SHARE = 0.05


def new_item_vectors(lake: str, item_idx: np.ndarray) -> np.ndarray:
    """The carved items' text vectors as a new item's: the configured template, tags emptied."""
    from pyspark.sql import functions as F

    from sparkrec.session import get_spark
    from sparkrec.text.assemble import item_text
    from sparkrec.text.encoders import make_encoder

    cfg = EmbedConfig()
    spark = get_spark()
    table = DeltaTable(f"{lake}/item_features_cold_items").to_pandas()
    features = spark.createDataFrame(table[table.item_idx.isin(item_idx)].drop(columns=["attributes"])) \
        .withColumn("top_tags", F.array().cast("array<string>"))
    rows = features.select("item_idx", item_text(features, cfg.item_template).alias("text")).toPandas()
    by_item = dict(zip(rows["item_idx"], rows["text"], strict=True))
    return make_encoder(cfg).encode([by_item[int(i)] for i in item_idx])


def ranking(scores: np.ndarray, targets: sparse.csr_matrix) -> tuple[float, float]:
    """(Recall@20, NDCG@10) over the carved items: hits / relevant, as sparkrec.listmetrics."""
    truth = targets.toarray() > 0
    n_rel = truth.sum(1)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    hit = np.take_along_axis(truth, top, 1)
    recall = hit.sum(1) / n_rel
    gains = 1.0 / np.log2(np.arange(2, 12))
    ideal = np.array([gains[:min(n, 10)].sum() for n in n_rel])
    return float(recall.mean()), float(((hit[:, :10] * gains).sum(1) / ideal).mean())


def carve(split: pd.DataFrame, vectors: np.ndarray, lake: str, seed: int, regs: list[float],
          ridges: list[float]) -> dict[str, tuple[float, float]]:
    train = split[(split.part == "train") & split.is_positive]
    n_users, n_items = int(split.user_idx.max()) + 1, vectors.shape[0]
    warm = np.unique(train.item_idx)
    carved = np.sort(np.random.default_rng(seed).choice(warm, size=int(len(warm) * CARVE_SHARE), replace=False))
    is_carved = np.zeros(n_items, bool)
    is_carved[carved] = True
    fit, held = train[~is_carved[train.item_idx]], train[is_carved[train.item_idx]]
    r = sparse.csr_matrix((fit.weight.to_numpy(np.float64), (fit.user_idx, fit.item_idx)), shape=(n_users, n_items))
    r.sum_duplicates()
    users = np.intersect1d(np.unique(held.user_idx), np.unique(fit.user_idx))
    targets = sparse.csr_matrix((np.ones(len(held)), (held.user_idx, held.item_idx)),
                                shape=(n_users, n_items))[users][:, carved]
    text = vectors.copy()
    text[carved] = new_item_vectors(lake, carved)
    content = unit_rows(np.asarray(r[users] @ text)) @ unit_rows(text[carved]).T
    out = {"content-only": ranking(content, targets)}
    fitted = np.flatnonzero(np.asarray((r > 0).sum(0)).ravel() > 0)
    for reg in regs:
        y = implicit_als(r.indptr, r.indices, r.data, n_items, 64, reg, 1.0, 15, seed)
        folded = fold_in(y, r[users].indptr, r[users].indices, r[users].data, reg, 1.0)
        for ridge in ridges:
            scores = folded @ content_factors(text, fitted, y[fitted], carved, ridge).T
            out[f"factors reg={reg} ridge={ridge}"] = ranking(scores, targets)
            for share in CONTENT_SHARES:
                out[f"factors reg={reg} ridge={ridge} + {share} content"] = ranking(
                    zscore(scores) + share * zscore(content), targets)
    print(f"carve seed {seed}: {len(carved)} items, {len(users)} users")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lake", help="a dataset's lake directory holding split_cold_items")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--regs", type=float, nargs="+", default=list(ALS_REGS), help="ALS reg (Spark's scaling)")
    parser.add_argument("--ridges", type=float, nargs="+", default=list(RIDGES), help="content_factors' ridge")
    args = parser.parse_args()
    split = DeltaTable(f"{args.lake}/split_cold_items").to_pandas(
        columns=["user_idx", "item_idx", "weight", "is_positive", "part"])
    table = DeltaTable(f"{args.lake}/item_embeddings_cold_items").to_pandas(columns=["item_idx", "vector"])
    vectors = np.zeros((int(max(split.item_idx.max(), table.item_idx.max())) + 1, len(table.vector.iloc[0])),
                       np.float32)
    vectors[table.item_idx.to_numpy()] = np.stack(table.vector.to_numpy())
    runs = [carve(split, vectors, args.lake, seed, args.regs, args.ridges) for seed in args.seeds]
    print(f"\n{'method':<44} {'Recall@20 mean':>14} {'x content':>9} {'min x':>6} {'NDCG@10':>8}")
    for name in runs[0]:
        recall = np.array([run[name][0] for run in runs])
        ratio = recall / np.array([run["content-only"][0] for run in runs])
        ndcg = np.mean([run[name][1] for run in runs])
        print(f"{name:<44} {recall.mean():>14.4f} {ratio.mean():>9.2f} {ratio.min():>6.2f} {ndcg:>8.4f}")


if __name__ == "__main__":
    main()
