"""Scale curve (issue 16): Book-Crossing's users and events x1, x2, x4, x8 through ingest,
features, train (fixed steps) and recommend; seconds per stage and the fitted growth exponent.

The scale-up keeps the catalogue and the distribution: replica r of every user is a new user
(id + r x 10,000,000) with the same ratings and the same row in the users file; the books file is
shared. Malformed rows are replicated too, so every quarantine reason keeps its share. Each
scale gets a fresh lake and runs the stages of ``sparkrec pipeline`` through the CLI's own
``run_stages`` (``benchmarks/pipeline.py``'s ``ours``), with ``conf/local.yaml`` and:

- ``train.epochs=1 train.steps_per_epoch=--steps``: a fixed number of training steps, so the
  curve shows how the data-bound work grows, not how long one chooses to train;
- ``model.use_text=false`` and no ``embed`` stage: the catalogue, hence its embedding, is the
  same at every scale (embedding 271k books alone is ~6-17 min here; see benchmarks/embed.py).

``--fraction F`` starts from a deterministic 1/round(1/F) of the users (by id), so the whole
curve fits on a 2-core machine; ``--fraction 1`` is the full data set (x8 = 9.2M ratings).
The exponent is the slope of log(total seconds) against log(scale) over the scales run.

    python benchmarks/scale.py --fraction 0.125          # 1/8 of Book-Crossing's users as x1
    python benchmarks/scale.py --fraction 1 --scales 1 2 # the full set and its double
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OFFSET = 10_000_000  # above every Book-Crossing user id (at most 278,858)
USER = re.compile(r'^"(\d+)"')
SCALED = ("BX-Book-Ratings.csv", "BX-Users.csv")


def scaled_copy(src: Path, out: Path, factor: int, keep_every: int) -> None:
    """``src``'s Book-Crossing files with ``factor`` replicas of every kept user. A line that does
    not start with a user id (a record's continuation, or a malformed row) follows the decision
    made for the line before it, so multi-line records stay whole."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "BX-Books.csv").symlink_to(src / "BX-Books.csv")
    for name in SCALED:
        with open(src / name, encoding="ISO-8859-1", newline="") as f:
            header, lines = f.readline(), f.readlines()
        kept, keeping = [], True
        for line in lines:
            m = USER.match(line)
            if m:
                keeping = int(m[1]) % keep_every == 0
            if keeping:
                kept.append(line)
        with open(out / name, "w", encoding="ISO-8859-1", newline="") as w:
            w.write(header)
            for r in range(factor):
                if r == 0:
                    w.writelines(kept)
                else:
                    shift = r * OFFSET
                    w.writelines(USER.sub(lambda m, s=shift: f'"{int(m[1]) + s}"', line, count=1) for line in kept)


def growth_exponent(scales: list[int], seconds: list[float]) -> float:
    """Slope of log(seconds) on log(scale): 1 is linear growth."""
    return float(np.polyfit(np.log(scales), np.log(seconds), 1)[0]) if len(scales) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--fraction", type=float, default=0.125, help="share of Book-Crossing's users at x1")
    ap.add_argument("--steps", type=int, default=200, help="training steps at every scale")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides")
    ap.add_argument("--workdir", default=None, help="kept when given (default: a temporary one, removed)")
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pipeline import ours

    from sparkrec.config import load_config
    from sparkrec.lake import open_lake
    from sparkrec.logs import setup_logging
    from sparkrec.session import get_spark

    setup_logging("WARNING")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sparkrec-bench-scale-"))
    base = load_config(REPO / "conf" / "local.yaml", [])
    src = (REPO / base.data.paths.bookcrossing).resolve()  # an absolute path replaces REPO
    keep_every = max(1, round(1 / args.fraction))
    stages = ("ingest", "features", "train", "recommend")
    rows: list[dict[str, float]] = []
    spark = None
    for scale in args.scales:
        data = work / f"x{scale}" / "data"
        t = time.perf_counter()
        scaled_copy(src, data, scale, keep_every)
        prep = time.perf_counter() - t
        root = work / f"x{scale}"
        cfg = load_config(REPO / "conf" / "local.yaml", [
            f"lake.root={root / 'lake'}", f"train.workdir={root / 'train'}", f"train.mlflow_uri={root / 'mlruns'}",
            "data.dataset=bookcrossing", f"data.paths.bookcrossing={data}", "model.use_text=false",
            "train.epochs=1", f"train.steps_per_epoch={args.steps}", "train.progress=false", "logging.level=WARNING",
            *args.set])
        spark = spark or get_spark(cfg.spark)
        print(f"== x{scale}: 1/{keep_every} of Book-Crossing's users x {scale} (files written in {prep:.0f} s; "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
        times = ours(cfg, spark, stages)
        lake = open_lake(spark, cfg)
        times["events"] = float(lake.read("interactions").count())
        times["users"] = float(lake.read("user_index").count())
        rows.append(times)
        shutil.rmtree(root, ignore_errors=True)  # one scale's lake at a time on disk
    print(f"\n{'scale':>5} {'events':>10} {'users':>8} " + " ".join(f"{s:>10}" for s in stages) + f" {'total':>9}")
    totals = []
    for scale, r in zip(args.scales, rows, strict=True):
        total = sum(r[s] for s in stages)
        totals.append(total)
        print(f"{'x' + str(scale):>5} {int(r['events']):>10,} {int(r['users']):>8,} "
              + " ".join(f"{r[s]:>9.1f}s" for s in stages) + f" {total:>8.1f}s")
    for s in stages:
        print(f"growth exponent {s:<10} {growth_exponent(args.scales, [r[s] for r in rows]):.3f}")
    print(f"growth exponent of total time x{args.scales[0]}..x{args.scales[-1]}: "
          f"{growth_exponent(args.scales, totals):.3f} (target <= 1.1)")
    if spark is not None:
        spark.stop()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
