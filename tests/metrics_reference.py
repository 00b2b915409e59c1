"""Plain-Python twins of :mod:`sparkrec.ranking` and :mod:`sparkrec.evaluation.metrics`,
written independently as loops.

They live with the tests, not in the package: the package keeps one implementation. They
exist to check the Spark code: the two share no helper, so an error in one formula
shows up as a disagreement in the tests. Inputs are pandas frames with the same columns as
the Spark ones; use them on small data only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd


def _test(truth: pd.DataFrame) -> pd.DataFrame:
    return truth[truth["part"] == "test"] if "part" in truth.columns else truth


def _train(train: pd.DataFrame) -> pd.DataFrame:
    return train[train["part"] == "train"] if "part" in train.columns else train


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _gain(row: pd.Series, graded: bool, gain: str) -> float:
    if not graded:
        return 1.0
    rating = row.get("rating")
    if not _missing(rating) and rating > 0:
        raw = float(rating)
    else:
        weight = row.get("weight")
        raw = 1.0 if _missing(weight) else float(weight)
    return 2.0 ** raw - 1.0 if gain == "exponential" else raw


def _ranked_lists(recs: pd.DataFrame) -> dict[int, list[int]]:
    lists: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for user, item, rank in zip(recs["user_idx"], recs["item_idx"], recs["rank"], strict=True):
        lists[int(user)].append((int(rank), int(item)))
    out: dict[int, list[int]] = {}
    for user, pairs in lists.items():
        seen: set[int] = set()
        ordered = []
        for _, item in sorted(pairs):
            if item not in seen:
                seen.add(item)
                ordered.append(item)
        out[user] = ordered
    return out


def ranking_metrics(recs: pd.DataFrame, truth: pd.DataFrame, ks: Sequence[int], graded: bool = True,
                    gain: str = "linear") -> dict[str, float]:
    relevant: dict[int, dict[int, float]] = defaultdict(dict)
    for _, row in _test(truth).iterrows():
        if not _missing(row["is_positive"]) and bool(row["is_positive"]):
            user, item = int(row["user_idx"]), int(row["item_idx"])
            relevant[user][item] = max(relevant[user].get(item, -math.inf), _gain(row, graded, gain))
    # An item listed twice counts once, at its best rank.
    rank_of: dict[int, dict[int, int]] = defaultdict(dict)
    for user, item, rank in zip(recs["user_idx"], recs["item_idx"], recs["rank"], strict=True):
        prev = rank_of[int(user)].get(int(item))
        rank_of[int(user)][int(item)] = int(rank) if prev is None else min(prev, int(rank))

    sums: dict[str, float] = defaultdict(float)
    for user, gains in relevant.items():
        hits = sorted((rank_of[user][item], g) for item, g in gains.items() if item in rank_of[user])
        ideal = sorted(gains.values(), reverse=True)
        sums["mrr"] += 1.0 / hits[0][0] if hits else 0.0
        for k in ks:
            in_k = [(r, g) for r, g in hits if r <= k]
            n_hits = len(in_k)
            dcg = sum(g / math.log2(r + 1) for r, g in in_k)
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            ap = sum((i + 1) / r for i, (r, _) in enumerate(in_k))
            sums[f"precision@{k}"] += n_hits / k
            sums[f"recall@{k}"] += n_hits / len(gains)
            sums[f"ndcg@{k}"] += dcg / idcg if idcg > 0 else 0.0
            sums[f"map@{k}"] += ap / min(len(gains), k)
            sums[f"hitrate@{k}"] += 1.0 if n_hits else 0.0
    n = len(relevant)
    out = {name: value / n for name, value in sums.items()} if n else {}
    out["n_users"] = float(n)
    return out


def catalog_coverage(recs: pd.DataFrame, n_items: int, k: int) -> float:
    return len(set(recs.loc[recs["rank"] <= k, "item_idx"])) / n_items


def _popularity(train: pd.DataFrame) -> tuple[dict[int, int], int]:
    rows = _train(train)
    users_of: dict[int, set[int]] = defaultdict(set)
    for user, item in zip(rows["user_idx"], rows["item_idx"], strict=True):
        users_of[int(item)].add(int(user))
    return {item: len(users) for item, users in users_of.items()}, len(set(rows["user_idx"]))


def _mean_of_user_means(recs: pd.DataFrame, k: int, value) -> float:
    per_user: dict[int, list[float]] = defaultdict(list)
    for user, item, rank in zip(recs["user_idx"], recs["item_idx"], recs["rank"], strict=True):
        if rank <= k:
            per_user[int(user)].append(value(int(item)))
    means = [sum(v) / len(v) for v in per_user.values()]
    return sum(means) / len(means) if means else math.nan


def novelty(recs: pd.DataFrame, train: pd.DataFrame, k: int) -> float:
    pop, n_users = _popularity(train)
    return _mean_of_user_means(recs, k, lambda item: -math.log2(max(pop.get(item, 0), 1) / n_users))


def popularity_bias(recs: pd.DataFrame, train: pd.DataFrame, k: int) -> float:
    pop, _ = _popularity(train)
    catalogue_mean = sum(pop.values()) / len(pop)
    return _mean_of_user_means(recs, k, lambda item: float(pop.get(item, 0))) / catalogue_mean


def intra_list_diversity(recs: pd.DataFrame, item_vectors: pd.DataFrame, k: int) -> float:
    vectors = {int(i): np.asarray(v, dtype=np.float64)
               for i, v in zip(item_vectors["item_idx"], item_vectors["vector"], strict=True)}
    top_k = recs[(recs["rank"] <= k) & recs["item_idx"].isin(list(vectors))]
    per_user = []
    for top in _ranked_lists(top_k).values():
        distances = []
        for a in range(len(top)):
            for b in range(a + 1, len(top)):
                va, vb = vectors[top[a]], vectors[top[b]]
                na, nb = np.linalg.norm(va), np.linalg.norm(vb)
                cos = float(va @ vb / (na * nb)) if na > 0 and nb > 0 else 0.0
                distances.append(1.0 - cos)
        if distances:
            per_user.append(sum(distances) / len(distances))
    return sum(per_user) / len(per_user) if per_user else math.nan


def rating_errors(pred: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    test = _test(truth)
    rated = {(int(u), int(i)): float(r)
             for u, i, r in zip(test["user_idx"], test["item_idx"], test["rating"], strict=True)
             if not _missing(r)}
    errors = [float(p) - rated[(int(u), int(i))]
              for u, i, p in zip(pred["user_idx"], pred["item_idx"], pred["prediction"], strict=True)
              if (int(u), int(i)) in rated]
    if not errors:
        return {"rmse": math.nan, "mae": math.nan, "n": 0.0}
    return {"rmse": math.sqrt(sum(e * e for e in errors) / len(errors)),
            "mae": sum(abs(e) for e in errors) / len(errors), "n": float(len(errors))}
