"""Derive the bundled demo sample from ml-latest-small (run once; the output is committed).

Keeps 150 users drawn at random (seed 7) with all their ratings, every movie they rated plus
300 movies nobody in the sample rated (so cold-start items exist), and the tags of those
movies. Usage: python scripts/make_sample.py ../shared/datasets/ml-latest-small
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "sparkrec" / "data" / "sample" / "ml-latest-small"


def main(src: Path) -> None:
    ratings = pd.read_csv(src / "ratings.csv", dtype=str)
    movies = pd.read_csv(src / "movies.csv", dtype=str, keep_default_na=False)
    tags = pd.read_csv(src / "tags.csv", dtype=str, keep_default_na=False)
    users = pd.Series(ratings["userId"].unique()).sample(150, random_state=7)
    r = ratings[ratings["userId"].isin(users)]
    rated = set(r["movieId"])
    unrated = movies[~movies["movieId"].isin(rated)].sample(300, random_state=7)["movieId"]
    keep = rated | set(unrated)
    m = movies[movies["movieId"].isin(keep)]
    t = tags[tags["movieId"].isin(keep)]
    OUT.mkdir(parents=True, exist_ok=True)
    r.to_csv(OUT / "ratings.csv", index=False)
    m.to_csv(OUT / "movies.csv", index=False)
    t.to_csv(OUT / "tags.csv", index=False)
    shutil.copy(src / "README.txt", OUT / "README-ml-latest-small.txt")
    print(f"sample: {len(r)} ratings, {r['userId'].nunique()} users, {len(m)} movies, {len(t)} tags -> {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/ml-latest-small"))
