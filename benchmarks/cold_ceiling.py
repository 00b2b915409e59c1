"""How high cold-item Recall@20 can go from what a new item has: a yardstick for issue 11's 2x.

The cold-item protocol ranks, for every test user, only the held-out items (nobody interacted
with them in train), and Recall@20 there is dominated by a few items many test users took. This
prints, on the test part of ``split_cold_items``, with the evaluator's Recall@20 (hits /
relevant, as sparkrec.listmetrics):

* an oracle that knows each held-out item's *test* popularity and gives every user the same 20
  most-taken items: a cheat no model can have, printed only as the scale of the goal;
* the same single list from popularity *predicted from text* (a ridge from the unit text vector
  of each warm item to log(1 + its train positives), ridge 0.2 of the Gram's mean diagonal as
  the model's cold factors use): how much of that popularity an item's text carries;
* the Spearman correlation of predicted and true test popularity over the shelf.

Nothing here is chosen or tuned; run it on the lake ``benchmarks/quality.py --work DIR
--protocols cold_items`` leaves:

    python benchmarks/cold_ceiling.py DIR/lake/movielens --content-only 0.2235 --hybrid 0.3436
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from cold_map import ranking  # a sibling script: benchmarks/ is on the path when run
from deltalake import DeltaTable
from scipy import sparse

from sparkrec.baselines.content import unit_rows

RIDGE = 0.2


def text_popularity(vectors: np.ndarray, train: pd.DataFrame, shelf: np.ndarray) -> np.ndarray:
    counts = train.groupby("item_idx").size()
    x = np.hstack([vectors[counts.index.to_numpy()], np.ones((len(counts), 1))])
    gram = x.T @ x
    w = np.linalg.solve(gram + RIDGE * np.trace(gram) / len(gram) * np.eye(len(gram)),
                        x.T @ np.log1p(counts.to_numpy(np.float64)))
    return np.hstack([vectors[shelf], np.ones((len(shelf), 1))]) @ w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lake", help="a quality lake's dataset directory, e.g. DIR/lake/movielens")
    ap.add_argument("--content-only", type=float, default=None, help="its Recall@20 from quality.py, to print ratios")
    ap.add_argument("--hybrid", type=float, default=None, help="the hybrid's Recall@20 from quality.py")
    args = ap.parse_args()
    split = DeltaTable(f"{args.lake}/split_cold_items").to_pandas()
    emb = DeltaTable(f"{args.lake}/item_embeddings_cold_items").to_pandas()
    vectors = np.zeros((int(max(emb.item_idx.max(), split.item_idx.max())) + 1, len(emb.vector.iloc[0])))
    vectors[emb.item_idx.to_numpy()] = unit_rows(np.stack(emb.vector.to_numpy()))
    train = split[(split.part == "train") & split.is_positive]
    test = split[(split.part == "test") & split.is_positive]
    shelf = np.sort(split[split.part == "test"].item_idx.unique())
    users = np.sort(test.user_idx.unique())
    column = pd.Series(np.arange(len(shelf)), index=shelf)
    targets = sparse.csr_matrix((np.ones(len(test)), (np.searchsorted(users, test.user_idx),
                                                       column[test.item_idx].to_numpy())),
                                shape=(len(users), len(shelf)))
    truth = np.asarray(targets.sum(0)).ravel()
    predicted = text_popularity(vectors, train, shelf)
    print(f"{args.lake}: {len(shelf)} held-out items, {len(users)} test users, {len(test)} test positives")
    rows = {"oracle: the test's own popularity (a cheat)": truth, "popularity predicted from text": predicted}
    goal = None if args.content_only is None else 2 * args.content_only
    for name, score in rows.items():
        recall, ndcg = ranking(np.tile(score, (len(users), 1)), targets)
        extra = f"; the 2x goal {goal:.4f} is {goal / recall:.0%} of it" if goal is not None and score is truth else ""
        print(f"  {name:<45} Recall@20 {recall:.4f}  NDCG@10 {ndcg:.4f}{extra}")
    spearman = pd.Series(predicted).corr(pd.Series(truth), method="spearman")
    print(f"  Spearman(text-predicted, true test popularity) over the shelf: {spearman:.3f}")
    if args.hybrid is not None and args.content_only is not None:
        print(f"  measured: content-only {args.content_only:.4f}, hybrid {args.hybrid:.4f} "
              f"({args.hybrid / args.content_only:.2f}x), 2x goal {goal:.4f}")


if __name__ == "__main__":
    main()
