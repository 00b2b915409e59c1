"""Hugging Face transformer encoder: the default, runs offline from a local model directory.

Inside Spark it is a ``predict_batch_udf``: each Python worker loads the model once (Spark's
model cache keeps it across tasks while the worker is reused) and then feeds it fixed-size
batches. Each worker gets ``cores / concurrent tasks`` torch threads: with Spark already
running one task per core, letting every worker's torch also use every core oversubscribes
the CPU and is slower than one thread each (measured, see ../shared/STACK.md).

Two runtimes run the same weights: ``torch`` (CPU or CUDA) and ``onnx`` (ONNX Runtime on CPU,
fp32 or dynamically quantised int8; see ``onnx_model``). Either way, every call sorts its texts
by length, embeds each distinct text once and restores the order (``batching``): one
``predict_batch_udf`` call receives ``bucket_rows`` rows, the model sees ``batch_size`` at a time.
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
from .batching import embed_bucketed
from .encoders import EncoderUnavailableError, TextEncoder
from .filedigest import cache_root, file_digests

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
    runtime: str = "torch"  # torch | onnx
    quantize: str = "none"  # none | int8 (onnx only)
    bucket_rows: int = 1024  # rows sorted by length together (one predict_batch_udf call)
    cache_dir: str | None = None  # None: $SPARKREC_CACHE or ~/.cache/sparkrec on each machine


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


def model_files(path: Path) -> list[Path]:
    """The weight and tokenizer files of a model directory: what, besides config.json,
    decides its vectors."""
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _TOKENIZER_FILES))
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise EncoderUnavailableError(f"model directory {path} has no weights file")
    return files


def model_digest(path: Path, cache_dir: str | None = None) -> str:
    """sha256 over config.json and the bytes of every weight and tokenizer file.

    Content, not names and sizes: a fine-tune written over ``model.safetensors`` keeps both.
    The per-file digests are cached (``filedigest``), so only the first run on a machine pays
    for reading the weights (MiniLM's 91 MB: 0.16 s from the page cache on a loaded core).
    """
    config = json.loads((path / "config.json").read_text())
    config.pop("_name_or_path", None)  # an absolute path on some machines
    files = model_files(path)
    digests = file_digests(files, cache_root(cache_dir))
    payload = {"config": config, "files": sorted([p.name, digests[p]] for p in files)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def model_fingerprint(path: Path, settings: HFSettings) -> str:
    """Hash of what determines the vectors: the model's content (``model_digest``), pooling,
    length limit, normalisation and quantisation.

    Left out because they do not move the vectors beyond float noise: the device (CUDA runs
    fp16), the batch size and bucketing (only the padding changes), and the runtime: ONNX
    fp32 vectors had cosine >= 0.999999 to torch's on every one of 2,000 Book-Crossing texts
    (benchmarks/encoder.py), so switching runtime=torch|onnx reuses the stored vectors. int8
    moves them (mean cosine 0.992, min 0.96-0.97 there), so ``quantize`` is part of the hash.
    """
    payload = {"model": model_digest(path, settings.cache_dir), "pooling": settings.pooling,
               "max_length": settings.max_length, "normalize": settings.normalize,
               "quantize": settings.quantize}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def onnx_file(path: Path, settings: HFSettings) -> Path:
    """The cached ONNX export of this model at the configured precision (exported if missing)."""
    from .onnx_model import onnx_model_file

    return onnx_model_file(path, model_digest(path, settings.cache_dir), settings.quantize,
                           cache_root(settings.cache_dir))


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
    """A tokenizer and model (torch or ONNX Runtime) loaded on one device: one per Python process."""

    def __init__(self, settings: HFSettings, threads: int | None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if threads == 1:  # the Rust tokenizer would otherwise start a thread per core too
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        path = resolve_model_path(settings.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.settings = settings
        self.torch = torch
        if settings.runtime == "onnx":
            from .onnx_model import OnnxForward

            self.device = torch.device("cpu")
            session = OnnxForward(onnx_file(path, settings), threads)
            self._forward: Callable[[dict[str, np.ndarray]], Any] = \
                lambda tokens: torch.from_numpy(session(tokens))
        else:
            self.device = self._torch_device(settings.device)
            self._forward = self._load_torch(path)

    def _torch_device(self, want: str) -> Any:
        torch = self.torch
        if want == "cuda" and not torch.cuda.is_available():
            raise EncoderUnavailableError("embed.device=cuda but torch sees no CUDA device here")
        return torch.device("cuda" if want in ("auto", "cuda") and torch.cuda.is_available() else "cpu")

    def _load_torch(self, path: Path) -> Callable[[dict[str, np.ndarray]], Any]:
        from transformers import AutoModel

        torch, device = self.torch, self.device
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype).to(device).eval()

        def forward(tokens: dict[str, np.ndarray]) -> Any:
            inputs = {k: torch.from_numpy(v).to(device) for k, v in tokens.items()}
            return model(**inputs).last_hidden_state.float()

        return forward

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """One model call on these texts as given -> float32 (n, dim); padded to the longest."""
        torch = self.torch
        s = self.settings
        tokens = dict(self.tokenizer([str(t) for t in texts], padding=True, truncation=True,
                                     max_length=s.max_length, return_tensors="np"))
        with torch.inference_mode():
            hidden = self._forward(tokens)
            if s.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = torch.from_numpy(tokens["attention_mask"]).to(hidden.device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if s.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy().astype(np.float32, copy=False)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Any number of texts -> float32 (n, dim) in input order: the single code path for
        Spark and in-process use. Distinct texts only, in length-sorted model batches."""
        return embed_bucketed(texts, self.embed_batch, self.settings.batch_size)


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
        if settings.runtime == "onnx":  # export now, on the driver: fails before any job, and
            onnx_file(self.path, settings)  # workers sharing this disk find the file cached
        self._local: _Runtime | None = None

    @classmethod
    def from_config(cls, cfg: EmbedConfig, spark: SparkSession | None = None) -> TransformersEncoder:
        settings = HFSettings(cfg.model, cfg.batch_size, cfg.max_length, cfg.pooling, cfg.normalize,
                              cfg.device, cfg.runtime, cfg.quantize, cfg.bucket_rows, cfg.cache_dir)
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
                                 batch_size=max(self.settings.bucket_rows, self.settings.batch_size))

    def embed_column(self, df: DataFrame, text_col: str, out_col: str) -> DataFrame:
        return df.withColumn(out_col, self.udf()(text_col))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """In-process embedding: all texts bucketed by length together, original order kept."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.runtime().embed(texts)

    def runtime(self, threads: int | None = None) -> _Runtime:
        """This process's model, loaded on first use with ``threads`` torch / ORT threads
        (None: the libraries' default, every core); later calls return the same one."""
        if self._local is None:
            self._local = _Runtime(self.settings, threads)
        return self._local
