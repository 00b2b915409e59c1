"""CPU text encoder variants, texts/s and cosine to torch fp32, measured in one run on the same texts.

Variants (one process, the same thread count for all, ``--threads`` = 1 by default: what one
Spark task slot gets, see sparkrec/text/hf.py), each printed as ``name@batch size``:

* ``torch_baseline``: the encoder before issue 16: model batches of 64 rows in input order, no
  length sorting, no de-duplication (what ``predict_batch_udf`` did with each batch it got);
* ``torch_bucketed``: torch, ``bucket_rows`` rows at a time sorted by length and de-duplicated,
  at batch 64 and at 16 (to separate the batch size's share from the runtime's);
* ``onnx_fp32``, ``onnx_int8``: ONNX Runtime with the same bucketing, at its default batch 16.

Rounds alternate the variants and the median is reported, so load from other processes hits
all of them alike. Cosine is against ``torch_baseline``'s vectors, row by row. Two ratios:
``x base`` against torch_baseline, and ``x bucketed`` against torch_bucketed, which is the
fairer one for the Spark embed stage: it already sorted each partition by text length before
the UDF (sparkrec/text/embed.py), so its batches were length-bucketed before issue 16.
Besides wall-clock texts/s, texts per CPU-second of this process (``/cpu-s``): with one thread
it is the variant's own cost, less distorted by other processes on a loaded machine.
Texts: Book-Crossing books as the embed stage builds them ("{title}. {author}. {publisher}
{year}."), a seeded sample.

Measured 2026-12-02 on the shared 2-core machine, loaded by other agents' jobs (load average
8.8-9.2 during the run: wall-clock numbers are low and noisy, /cpu-s steadier), 2,000 texts
(all distinct), 1 thread, bucket_rows 1024, 3 rounds::

    variant@batch           texts/s  x base x bucketed  /cpu-s  x base  cos mean   cos min
    torch_baseline@64          83.0     1.0        0.7   137.8     1.0       1.0       1.0
    torch_bucketed@64         118.4    1.43        1.0   192.4     1.4       1.0       1.0
    torch_bucketed_b16@16     136.7    1.65       1.15   215.6    1.56       1.0       1.0
    onnx_fp32@16              133.6    1.61       1.13   202.6    1.47       1.0       1.0
    onnx_int8@16              243.6    2.94       2.06   427.4     3.1  0.991924  0.973575

(cosines print as 1.0 at 6 decimals: >= 0.9999995.) int8 ONNX clears issue 16's 2.5x over
the pre-issue encoder (2.94x wall, 3.1x per CPU-second) at mean cosine 0.992 (min 0.974);
against torch with the same length sorting, which the Spark stage already had, it is 2.06x.
fp32 ONNX is no faster than torch at the same batch size here. An earlier run at load 6-9
(int8 at batch 64 then) gave 2.46x wall; batch 16 for ONNX is the default since.

Usage::

    python benchmarks/encoder.py --texts 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sparkrec.config import EmbedConfig  # noqa: E402
from sparkrec.text.hf import TransformersEncoder  # noqa: E402

Embed = Callable[[Sequence[str]], np.ndarray]


def book_texts(root: Path, n: int, seed: int) -> list[str]:
    """``n`` Book-Crossing item texts in the embed stage's shape, a seeded sample of the catalogue."""
    import pandas as pd

    books = pd.read_csv(root / "BX-Books.csv", sep=";", quotechar='"', escapechar="\\", encoding="ISO-8859-1",
                        dtype=str, usecols=["Book-Title", "Book-Author", "Year-Of-Publication", "Publisher"])
    books = books.sample(n=min(n, len(books)), random_state=seed).fillna("")
    year = books["Year-Of-Publication"].where(books["Year-Of-Publication"] != "0", "")
    return [" ".join(f"{t}. {a}. {p} {y}.".split()) for t, a, p, y in
            zip(books["Book-Title"], books["Book-Author"], books["Publisher"], year, strict=True)]


def in_windows(embed: Embed, size: int) -> Embed:
    """``embed`` called on consecutive windows of ``size`` texts, as predict_batch_udf calls it."""
    def run(texts: Sequence[str]) -> np.ndarray:
        return np.concatenate([embed(texts[i:i + size]) for i in range(0, len(texts), size)])
    return run


# name, runtime, quantize, batch size (None: the runtime's default), bucketed
VARIANTS: tuple[tuple[str, str, str, int | None, bool], ...] = (
    ("torch_baseline", "torch", "none", None, False),
    ("torch_bucketed", "torch", "none", None, True),
    ("torch_bucketed_b16", "torch", "none", 16, True),
    ("onnx_fp32", "onnx", "none", None, True),
    ("onnx_int8", "onnx", "int8", None, True),
)


def variants(args: argparse.Namespace) -> dict[str, Embed]:
    """Each variant's embed function, models loaded (and ONNX exported) before any timing."""
    out: dict[str, Embed] = {}
    for name, runtime, quantize, batch, bucketed in VARIANTS:
        cfg = EmbedConfig(runtime=runtime, quantize=quantize, batch_size=batch, bucket_rows=args.bucket_rows)
        model = TransformersEncoder.from_config(cfg).runtime(args.threads)
        size = int(cfg.batch_size or 0)
        out[f"{name}@{size}"] = (in_windows(model.embed, args.bucket_rows) if bucketed
                                 else in_windows(model.embed_batch, size))
    return out


def measure(fns: dict[str, Embed], texts: list[str], repeats: int) -> dict[str, dict[str, Any]]:
    """Median texts/s per variant over alternating rounds, and cosine to torch_baseline."""
    for fn in fns.values():
        fn(texts[:64])  # warm-up: first-call allocations, ORT's arena
    speeds: dict[str, list[float]] = {name: [] for name in fns}
    cpu_speeds: dict[str, list[float]] = {name: [] for name in fns}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            vectors[name] = fn(texts)
            speeds[name].append(len(texts) / (time.perf_counter() - start))
            cpu_speeds[name].append(len(texts) / (time.process_time() - cpu_start))
    base_name, bucketed_name = list(fns)[:2]  # torch_baseline, torch_bucketed
    ref = vectors[base_name]
    base = statistics.median(speeds[base_name])
    bucketed = statistics.median(speeds[bucketed_name])
    cpu_base = statistics.median(cpu_speeds[base_name])
    report = {}
    for name, vec in vectors.items():
        cos = (vec * ref).sum(1) / (np.linalg.norm(vec, axis=1) * np.linalg.norm(ref, axis=1))
        median, cpu = statistics.median(speeds[name]), statistics.median(cpu_speeds[name])
        report[name] = {"texts_per_s": round(median, 1), "vs_baseline": round(median / base, 2),
                        "vs_torch_bucketed": round(median / bucketed, 2),
                        "texts_per_cpu_s": round(cpu, 1), "cpu_vs_baseline": round(cpu / cpu_base, 2),
                        "cos_mean": round(float(cos.mean()), 6), "cos_min": round(float(cos.min()), 6),
                        "rounds": [round(s, 1) for s in speeds[name]]}
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch / ORT threads (1 = one Spark task slot)")
    parser.add_argument("--bucket-rows", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    args = parser.parse_args(argv)

    texts = book_texts(args.datasets / "book-crossing", args.texts, args.seed)
    header = {"texts": len(texts), "distinct": len(set(texts)), "threads": args.threads,
              "bucket_rows": args.bucket_rows,
              "load_avg_start": round(os.getloadavg()[0], 2)}
    results = measure(variants(args), texts, args.repeats)
    header["load_avg_end"] = round(os.getloadavg()[0], 2)
    print("  ".join(f"{k}={v}" for k, v in header.items()))
    print(f"{'variant@batch':<22}{'texts/s':>9}{'x base':>8}{'x bucketed':>11}{'/cpu-s':>8}{'x base':>8}"
          f"{'cos mean':>10}{'cos min':>10}  rounds")
    for name, r in results.items():
        print(f"{name:<22}{r['texts_per_s']:>9}{r['vs_baseline']:>8}{r['vs_torch_bucketed']:>11}"
              f"{r['texts_per_cpu_s']:>8}{r['cpu_vs_baseline']:>8}{r['cos_mean']:>10}{r['cos_min']:>10}"
              f"  {r['rounds']}")
    report = {**header, "variants": results}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
