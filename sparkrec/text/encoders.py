"""One interface for every text encoder, so the embedding job does not care which runs.

An encoder does two things with the same model: embed a text column inside Spark (the batch
job, distributed over executors) and ``encode`` a handful of texts in this process (a query
such as "recommend from this text", or the benchmark's single-process baseline). Both must
give the same vectors, and both are identified by :meth:`TextEncoder.fingerprint`, which the
embedding tables store per row so a model change is detected and re-embeds everything.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from ..config import EmbedConfig

__all__ = ["EncoderUnavailableError", "TextEncoder", "make_encoder"]


class EncoderUnavailableError(RuntimeError):
    """The configured encoder cannot run on this cluster; the message says what to install."""


class TextEncoder(abc.ABC):
    """A sentence encoder usable both inside Spark and in one process."""

    #: short name stored in logs ("transformers", "sparknlp")
    kind: str

    @property
    @abc.abstractmethod
    def model_name(self) -> str:
        """What the tables' ``model`` column says: the model as configured."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Changes whenever the vectors could change (weights, tokenizer, pooling, length...)."""

    @abc.abstractmethod
    def embed_column(self, df: DataFrame, text_col: str, out_col: str) -> DataFrame:
        """``df`` plus ``out_col`` (array<float>) computed by the executors."""

    @abc.abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``(len(texts), dim)`` computed in this process, for queries and baselines."""


def make_encoder(cfg: EmbedConfig, spark: SparkSession | None = None) -> TextEncoder:
    """The encoder ``cfg.encoder`` names; fails now, not mid-job, when it cannot run here."""
    if cfg.encoder == "transformers":
        from .hf import TransformersEncoder

        return TransformersEncoder.from_config(cfg, spark)
    if cfg.encoder == "sparknlp":
        from .spark_nlp import SparkNLPEncoder

        if spark is None:
            raise EncoderUnavailableError("the sparknlp encoder runs only inside Spark: pass a session")
        return SparkNLPEncoder.from_config(cfg, spark)
    raise EncoderUnavailableError(f"unknown embed.encoder {cfg.encoder!r}")
