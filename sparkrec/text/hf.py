"""Hugging Face transformer encoder: the default, runs offline from a local model directory.

Inside Spark it is a ``predict_batch_udf``: each Python worker loads the model once (Spark's
model cache keeps it across tasks while the worker is reused) and then feeds it fixed-size
batches. Each worker gets ``cores / concurrent tasks`` torch threads: with Spark already
running one task per core, letting every worker's torch also use every core oversubscribes
the CPU and is slower than one thread each (measured, see ../shared/STACK.md).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import types as T

from ..config import EmbedConfig
from .encoders import EncoderUnavailableError, TextEncoder

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt")
_TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                              "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                              "special_tokens_map.json"})


@dataclass(frozen=True)
class HFSettings:
    """What a worker needs to load and run the model; small and picklable (shipped in the UDF)."""

    model: str
    batch_size: int = 64
    max_length: int = 128
    pooling: str = "mean"
    normalize: bool = True
    device: str = "auto"


def resolve_model_path(spec: str) -> Path:
    """A local model directory, or ``package:<module>`` whose ``get_model_path()`` names one.

    Resolved on each worker as well as on the driver, because an installed package's path
    differs between machines while the package name does not.
    """
    if spec.startswith("package:"):
        name = spec.removeprefix("package:")
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise EncoderUnavailableError(f"embed.model {spec!r}: Python package {name!r} is not "
                                          f"installed on this machine") from exc
        getter = getattr(module, "get_model_path", None)
        if getter is None:
            raise EncoderUnavailableError(f"embed.model {spec!r}: module {name!r} has no get_model_path()")
        path = Path(getter())
    else:
        path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise EncoderUnavailableError(f"embed.model {spec!r}: {path} is not a Hugging Face model "
                                      f"directory (no config.json); the encoder never downloads models")
    return path


def model_fingerprint(path: Path, settings: HFSettings) -> str:
    """Hash of what determines the vectors: config, weight and tokenizer files, pooling options.

    File names and sizes stand in for the weights' content, which would mean hashing hundreds
    of MB on every run; the device and batch size are left out because they do not change
    the vectors beyond float noise.
    """
    config = json.loads((path / "config.json").read_text())
    config.pop("_name_or_path", None)  # an absolute path on some machines
    files = sorted([p.name, p.stat().st_size] for p in path.iterdir()
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _TOKENIZER_FILES))
    if not any(name.endswith(_WEIGHT_SUFFIXES) for name, _ in files):
        raise EncoderUnavailableError(f"model directory {path} has no weights file")
    payload = {"config": config, "files": files, "pooling": settings.pooling,
               "max_length": settings.max_length, "normalize": settings.normalize}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def task_slots(spark: SparkSession) -> int | None:
    """Tasks one executor runs at once, when Spark says; None when the cluster manager decides."""
    sc = spark.sparkContext
    task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", sc.master)
    if match:
        given = match.group(1)
        cores = 1 if given is None else (os.cpu_count() or 1) if given == "*" else int(given)
        return max(1, cores // task_cpus)
    executor_cores = sc.getConf().get("spark.executor.cores")
    return max(1, int(executor_cores) // task_cpus) if executor_cores else None


class _Runtime:
    """A tokenizer and model loaded on one device: one per Python process."""

    def __init__(self, settings: HFSettings, threads: int | None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if threads == 1:  # the Rust tokenizer would otherwise start a thread per core too
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        want = settings.device
        if want == "cuda" and not torch.cuda.is_available():
            raise EncoderUnavailableError("embed.device=cuda but torch sees no CUDA device here")
        self.device = torch.device("cuda" if want in ("auto", "cuda") and torch.cuda.is_available()
                                   else "cpu")
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        path = resolve_model_path(settings.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval()
        self.settings = settings
        self.torch = torch

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One batch -> float32 (n, dim): the single code path for Spark and in-process use."""
        torch = self.torch
        s = self.settings
        tokens = self.tokenizer([str(t) for t in texts], padding=True, truncation=True,
                                max_length=s.max_length, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state.float()
            if s.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if s.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy().astype(np.float32, copy=False)


def _predict_fn_factory(settings: HFSettings, slots: int | None,
                        threads: int | None) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
    """``make_predict_fn`` for ``predict_batch_udf``: runs on the worker, so it decides the
    thread count from the worker's own core count."""

    def make_predict_fn() -> Callable[[np.ndarray], np.ndarray]:
        if threads:
            n = threads
        elif slots:
            n = max(1, (os.cpu_count() or 1) // slots)
        else:  # the executor's task slots are unknown: one task per spark.task.cpus cores
            n = 1
        runtime = _Runtime(settings, n)
        return runtime.embed

    return make_predict_fn


class TransformersEncoder(TextEncoder):
    """A Hugging Face encoder model with mean or CLS pooling, loaded from disk only."""

    kind = "transformers"

    def __init__(self, settings: HFSettings, slots: int | None = None,
                 threads_per_task: int | None = None) -> None:
        self.settings = settings
        self.path = resolve_model_path(settings.model)
        self.slots = slots
        self.threads_per_task = threads_per_task
        self._fingerprint = model_fingerprint(self.path, settings)
        self._local: _Runtime | None = None

    @classmethod
    def from_config(cls, cfg: EmbedConfig, spark: SparkSession | None = None) -> TransformersEncoder:
        settings = HFSettings(cfg.model, cfg.batch_size, cfg.max_length, cfg.pooling, cfg.normalize,
                              cfg.device)
        return cls(settings, task_slots(spark) if spark is not None else None, cfg.threads_per_task)

    @property
    def model_name(self) -> str:
        return self.settings.model

    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def dim(self) -> int:
        config: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        return int(config.get("hidden_size") or config.get("d_model") or config["dim"])

    def udf(self) -> Callable[[Column | str], Column]:
        """A fresh ``predict_batch_udf``; each call gets a new model-cache key on the workers."""
        from pyspark.ml.functions import predict_batch_udf

        return predict_batch_udf(_predict_fn_factory(self.settings, self.slots, self.threads_per_task),
                                 return_type=T.ArrayType(T.FloatType()),
                                 batch_size=self.settings.batch_size)

    def embed_column(self, df: DataFrame, text_col: str, out_col: str) -> DataFrame:
        return df.withColumn(out_col, self.udf()(text_col))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """In-process embedding with batches of similar length (less padding), original order kept."""
        if self._local is None:
            self._local = _Runtime(self.settings, None)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        size = self.settings.batch_size
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            out[idx] = self._local.embed([texts[i] for i in idx])
        return out
