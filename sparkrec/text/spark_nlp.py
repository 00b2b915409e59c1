"""Spark NLP encoder: for clusters that standardise on John Snow Labs' annotators.

Spark NLP runs its models in the JVM, so it needs the ``spark-nlp`` jar on the driver's and
executors' classpath as well as the Python package; neither can be fetched at run time on
an offline cluster. We check the JVM's class loader up front and fail with the Maven
coordinate to add, rather than with ``'JavaPackage' object is not callable`` deep in a job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import EmbedConfig
from .encoders import EncoderUnavailableError, TextEncoder

MAVEN_ARTIFACT = "com.johnsnowlabs.nlp:spark-nlp_2.12"
_PROBE_CLASS = "com.johnsnowlabs.nlp.DocumentAssembler"


def sparknlp_jar_available(spark: SparkSession) -> bool:
    """True when the JVM can load Spark NLP's classes (jar on the classpath)."""
    try:
        jvm = spark._jvm  # type: ignore[attr-defined]
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(_PROBE_CLASS, False, loader)
    except Exception:
        return False
    return True


def _python_package_version() -> str | None:
    try:
        return metadata.version("spark-nlp")
    except metadata.PackageNotFoundError:
        return None


def missing_reason(spark: SparkSession) -> str | None:
    """Why the Spark NLP encoder cannot run here (None when it can): names the fix."""
    version = _python_package_version()
    coordinate = f"{MAVEN_ARTIFACT}:{version or '<version>'}"
    problems = []
    if not sparknlp_jar_available(spark):
        problems.append(f"the Spark NLP jar is not on the JVM classpath: add Maven coordinate "
                        f"{coordinate} (spark.jars.packages, spark-submit --packages {coordinate}, "
                        f"or a cluster library)")
    if version is None:
        problems.append("the Python package is missing: pip install spark-nlp (same version as the jar)")
    if not problems:
        return None
    return "embed.encoder=sparknlp cannot run: " + "; ".join(problems)


def _normalized(vec: Column) -> Column:
    norm = F.sqrt(F.aggregate(vec, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    return F.transform(vec, lambda x: (x / F.greatest(norm, F.lit(1e-12))).cast("float"))


class SparkNLPEncoder(TextEncoder):
    """DocumentAssembler + one sentence-embedding annotator (pretrained name or local saved model)."""

    kind = "sparknlp"

    def __init__(self, spark: SparkSession, annotator: str, model: str, batch_size: int,
                 max_length: int, normalize: bool) -> None:
        reason = missing_reason(spark)
        if reason:
            raise EncoderUnavailableError(reason)
        self.spark = spark
        self.annotator = annotator
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.normalize = normalize
        self._stage = None

    @classmethod
    def from_config(cls, cfg: EmbedConfig, spark: SparkSession) -> SparkNLPEncoder:
        return cls(spark, cfg.sparknlp_annotator, cfg.sparknlp_model, cfg.batch_size, cfg.max_length,
                   cfg.normalize)

    @property
    def model_name(self) -> str:
        return f"sparknlp:{self.annotator}:{self.model}"

    def fingerprint(self) -> str:
        """Annotator, model and options; for a local model also its files' names and sizes."""
        local = Path(self.model)
        files = sorted([str(p.relative_to(local)), p.stat().st_size] for p in local.rglob("*")
                       if p.is_file()) if local.is_dir() else []
        payload = {"annotator": self.annotator, "model": self.model, "files": files,
                   "version": _python_package_version(), "max_length": self.max_length,
                   "normalize": self.normalize}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def _annotator(self):  # type: ignore[no-untyped-def]
        """The embedding stage, loaded once per encoder (pretrained downloads are cached by Spark NLP)."""
        if self._stage is None:
            import sparknlp.annotator as ann

            cls = getattr(ann, self.annotator, None)
            if cls is None:
                raise EncoderUnavailableError(f"embed.sparknlp_annotator {self.annotator!r} is not a "
                                              f"Spark NLP annotator")
            if Path(self.model).is_dir():
                stage = cls.loadSavedModel(self.model, self.spark)
            else:
                stage = cls.pretrained(self.model)
            stage = stage.setInputCols(["__sparknlp_doc"]).setOutputCol("__sparknlp_emb") \
                .setBatchSize(self.batch_size)
            if hasattr(stage, "setMaxSentenceLength"):  # not every embedding annotator truncates
                stage = stage.setMaxSentenceLength(self.max_length)
            self._stage = stage
        return self._stage

    def embed_column(self, df: DataFrame, text_col: str, out_col: str) -> DataFrame:
        from pyspark.ml import Pipeline
        from sparknlp.base import DocumentAssembler

        assembler = DocumentAssembler().setInputCol(text_col).setOutputCol("__sparknlp_doc")
        model = Pipeline(stages=[assembler, self._annotator()]).fit(df)
        # The whole text is one document, so the first annotation is its sentence embedding.
        vec = F.element_at(F.col("__sparknlp_emb"), 1).getField("embeddings").cast("array<float>")
        out = model.transform(df).withColumn(out_col, _normalized(vec) if self.normalize else vec)
        return out.drop("__sparknlp_doc", "__sparknlp_emb")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Through Spark even here (the model lives in the JVM): fine for queries, not for bulk."""
        df = self.spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i int, text string")
        rows = self.embed_column(df, "text", "vector").orderBy("i").select("vector").collect()
        return np.asarray([r["vector"] for r in rows], dtype=np.float32)
