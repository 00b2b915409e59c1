"""What the notebooks in ``notebooks/`` call: parameters, the run's config, and the tables they show.

The notebooks hold presentation only (which table to show, which plot to draw); every number
they show comes from here or from the stages themselves, so a notebook never computes
something the library does not.

Parameters: on Databricks each notebook's parameters are widgets (``dbutils.widgets``; a job's
``base_parameters`` fill them); elsewhere (Jupyter, papermill, CI) they are the notebook's
defaults, each overridable by an environment variable ``SPARKREC_NB_<NAME>``
(``SPARKREC_NB_WORK_DIR=/tmp/nb``), so a headless run can point every notebook at one work dir.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import Config, load_config

# Small settings that keep every stage quick on the bundled sample (what the notebooks use by
# default: widget `fast=true`). Quality needs the real settings: fast=false.
FAST_OVERRIDES: tuple[str, ...] = (
    "features.history_length=20",
    "embed.splits=[temporal_loo]",
    "train.epochs=1",
    "train.blend_trials=3",
    "train.progress=false",
    "evaluation.als_ranks=[16]",
    "evaluation.als_reg_params=[0.1]",
    "evaluation.als_alphas=[1.0]",
    "evaluation.als_max_iter=5",
    "evaluation.ease_lambdas=[100.0,500.0]",
    # the hybrid's item-item head on the driver: the 2,000 most popular items. EASE is left at its
    # default limit: it refuses a larger catalogue rather than cutting it (04_evaluation failed so).
    "model.head_max_items=2000",
)

# fast=true also switches off the evaluation splits nothing in the run uses (each costs a features pass)
SPLIT_SWITCHES = {"global_time": "global_time_cut_quantile", "random": "random_ratio",
                  "stratified": "stratified_ratio", "cold_items": "cold_items_fraction",
                  "cold_users": "cold_users_fraction"}


def splits_off(keep: Iterable[str] = ()) -> list[str]:
    """Overrides that switch off every optional evaluation split except those named in ``keep``
    (temporal leave-last-one is always written): for runs that judge one split, or none."""
    return [f"features.splits.{key}=null" for split, key in SPLIT_SWITCHES.items() if split not in keep]

# The table each stage writes last: present means the stage ran on this lake.
STAGE_OUTPUT = {"ingest": "ingest_runs", "features": "user_histories", "embed": "item_embeddings",
                "train": "item_vectors", "recommend": "recommendations"}
PIPELINE = ("ingest", "features", "embed", "train", "recommend")


def env_name(name: str) -> str:
    return "SPARKREC_NB_" + name.upper()


def widgets(defaults: Mapping[str, str], dbutils: Any = None) -> dict[str, str]:
    """The notebook's parameters, as strings.

    With ``dbutils`` (Databricks): one text widget per name, created with its default if it
    does not exist yet, and the values typed in (or passed by a job) are returned. Without it:
    the defaults, each replaced by ``$SPARKREC_NB_<NAME>`` where that is set.
    """
    if dbutils is not None:
        for name, default in defaults.items():
            dbutils.widgets.text(name, str(default))
        return {name: dbutils.widgets.get(name) for name in defaults}
    return {name: os.environ.get(env_name(name), str(default)) for name, default in defaults.items()}


def truthy(value: str | bool) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes", "on"}


def notebook_config(params: Mapping[str, str], *extra: str) -> Config:
    """The config a notebook runs with.

    ``params``: ``conf`` (a YAML file, empty for the built-in defaults: the bundled sample),
    ``work_dir`` (non-empty: the lake, training work dir, MLflow store and reports all go
    under it, so notebooks run in sequence share what the first built), ``fast`` (the small
    settings of ``FAST_OVERRIDES``) and ``overrides`` (``key.sub=value`` pairs, space separated).
    ``extra`` overrides come last.
    """
    overrides: list[str] = []
    if truthy(params.get("fast", "false")):
        overrides += FAST_OVERRIDES
    work = (params.get("work_dir") or "").strip()
    if work:
        root = Path(work).expanduser().resolve()
        overrides += [f"lake.root={root / 'lake'}", f"train.workdir={root / 'train'}",
                      f"train.mlflow_uri={root / 'mlruns'}", f"evaluation.report_dir={root / 'reports'}"]
    overrides += shlex.split(params.get("overrides") or "")
    overrides += extra
    conf = (params.get("conf") or "").strip() or None
    cfg = load_config(conf, overrides)
    if truthy(params.get("fast", "false")):
        used = {cfg.evaluation.split, cfg.train.split, *cfg.embed.splits}
        cfg = load_config(conf, [*overrides[:len(FAST_OVERRIDES)], *splits_off(used),
                                 *overrides[len(FAST_OVERRIDES):]])
    return cfg


def open_session(cfg: Config) -> tuple[Any, Any]:
    """(spark, lake): the cluster's session on Databricks, a local one elsewhere."""
    from .lake import RunContext, open_lake
    from .logs import setup_logging
    from .session import get_spark

    setup_logging(cfg.logging.level, cfg.logging.format)
    spark = get_spark(cfg.spark)
    return spark, open_lake(spark, cfg, RunContext(stage="notebook"))


def missing_stages(lake: Any, stages: Sequence[str] = PIPELINE) -> list[str]:
    """The stages (in pipeline order) whose output is not in the lake yet, and every stage after
    the first missing one (a later stage reads what an earlier one writes)."""
    for i, stage in enumerate(stages):
        if not lake.exists(STAGE_OUTPUT[stage]):
            return list(stages[i:])
    return []


def ensure_pipeline(cfg: Config, lake: Any, stages: Sequence[str] = PIPELINE) -> dict[str, Any]:
    """Runs the stages this lake lacks (all of them on an empty one); returns their summaries.
    A notebook run after ``00_quickstart`` on the same work dir reuses its lake."""
    from .cli import run_stages

    todo = missing_stages(lake, stages)
    wanted = {cfg.evaluation.split, cfg.train.split} - {"none"}
    if not todo and "features" in stages and any(not lake.exists(f"split_{s}") for s in wanted):
        todo = list(stages[stages.index("features"):])  # a split this run needs that an earlier run left out
    return run_stages(cfg, todo) if todo else {}


def table_overview(lake: Any, tables: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per table of the namespace: rows, columns and the Delta version."""
    rows = []
    for table in tables or lake.tables():
        if not lake.exists(table):
            continue
        df = lake.read(table)
        rows.append({"table": table, "rows": df.count(), "columns": len(df.columns),
                     "version": lake.version(table)})
    return pd.DataFrame(rows, columns=["table", "rows", "columns", "version"])


def preview(lake: Any, table: str, n: int = 5) -> pd.DataFrame:
    return lake.read(table).limit(n).toPandas()


# ----------------------------------------------------------------------------- data quality (01)
def ingest_runs(lake: Any) -> pd.DataFrame:
    """The ingest report of every run: rows read, accepted and quarantined per table."""
    return lake.read("ingest_runs").toPandas()


def quarantine_by_reason(lake: Any) -> pd.DataFrame:
    """Quarantined rows per (table, reason), most frequent first."""
    from pyspark.sql import functions as F

    if not lake.exists("quarantine"):
        return pd.DataFrame(columns=["target_table", "reason", "rows"])
    return (lake.read("quarantine").groupBy("target_table", "reason").agg(F.count("*").alias("rows"))
            .orderBy(F.desc("rows"), "target_table", "reason").toPandas())


def quarantine_examples(lake: Any, per_reason: int = 2) -> pd.DataFrame:
    """A few quarantined rows of each reason, with file, line, field, value and raw record."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("target_table", "reason").orderBy("source_file", "source_line")
    return (lake.read("quarantine").withColumn("n", F.row_number().over(w)).filter(F.col("n") <= per_reason)
            .drop("n", "record_id").orderBy("target_table", "reason").toPandas())


FAULTY_RATINGS = (  # one row per kind of fault ingest quarantines, appended to a copy of the sample
    "4,21,3.0,986935199",          # an exact copy of the sample's first row: duplicate_row
    "x9,21,3.0,986935199",         # a user id that is not a number: malformed_user_id
    "4,999999999,4.0,986935199",   # a movie not in movies.csv: unknown_item
    "4,32,7.5,986935199",          # outside 0.5-5: rating_out_of_range
    "4,50,good,986935199",         # unparsable_rating
    "4,110,4.0,yesterday",         # unparsable_timestamp
    "4,150,4.0",                   # a field missing: wrong_field_count
)


def ingest_with_faults(cfg: Config, spark: Any, params: Mapping[str, str]) -> tuple[Any, Any]:
    """Ingests a copy of the sample with ``FAULTY_RATINGS`` appended into its own namespace
    (``<namespace>_faults``) and returns (that lake, the ingest report)."""
    import shutil

    from .ingest.job import run_ingest
    from .ingest.presets import sample_dir
    from .lake import RunContext, open_lake

    work = Path((params.get("work_dir") or "").strip() or cfg.train.workdir).expanduser().resolve()
    src = work / "faulty-sample"
    src.mkdir(parents=True, exist_ok=True)
    sample = sample_dir()
    for name in ("movies.csv", "tags.csv"):
        shutil.copyfile(sample / name, src / name)
    ratings = (sample / "ratings.csv").read_text(encoding="utf-8").rstrip("\n")
    (src / "ratings.csv").write_text(ratings + "\n" + "\n".join(FAULTY_RATINGS) + "\n", encoding="utf-8")
    faulty = cfg.model_copy(deep=True)
    faulty.data.dataset = "movielens"
    faulty.data.paths.movielens = str(src)
    faulty.lake.namespace = f"{cfg.namespace}_faults"
    faulty_lake = open_lake(spark, faulty, RunContext(stage="ingest"))
    return faulty_lake, run_ingest(faulty, spark, faulty_lake)


def distributions(lake: Any) -> dict[str, pd.DataFrame]:
    """What the accepted data looks like: ratings, events per user and per item, events per
    year, items per genre (top 20)."""
    from pyspark.sql import functions as F

    events = lake.read("events")
    out = {
        "rating": events.groupBy("rating").count().orderBy("rating").toPandas(),
        "per_user": events.groupBy("user_idx").count().select(F.col("count").alias("events")).toPandas(),
        "per_item": events.groupBy("item_idx").count().select(F.col("count").alias("events")).toPandas(),
        "per_year": (events.filter(F.col("event_time").isNotNull())
                     .groupBy(F.year("event_time").alias("year")).count().orderBy("year").toPandas()),
    }
    items = lake.read("item_features")
    out["genres"] = (items.select(F.explode_outer("genres").alias("genre")).groupBy("genre").count()
                     .orderBy(F.desc("count")).limit(20).toPandas())
    return out


# ------------------------------------------------------------------------- text embeddings (02)
def item_text_matrix(lake: Any, table: str = "item_embeddings") -> tuple[pd.DataFrame, np.ndarray]:
    """(items, vectors): every embedded item with its title, genres and popularity, and its
    unit text vector as a row of a float32 matrix (the catalogue fits in driver memory)."""
    from pyspark.sql import functions as F

    vecs = lake.read(table).filter(F.col("item_idx").isNotNull()).select("item_idx", "vector")
    facts = lake.read("item_features").select("item_idx", "item_id", "title", "genres", "n_users")
    frame = vecs.join(facts, "item_idx").orderBy("item_idx").toPandas()
    matrix = np.asarray(np.stack(frame.pop("vector").to_numpy()), dtype=np.float32) if len(frame) \
        else np.zeros((0, 0), np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True) if matrix.size else 1.0
    return frame, matrix / np.maximum(norms, 1e-12)


def encode_texts(cfg: Config, spark: Any, texts: Sequence[str]) -> np.ndarray:
    """Texts -> unit vectors with the embed stage's own encoder (same model, same pooling)."""
    from .text import make_encoder

    vectors = make_encoder(cfg.embed, spark).encode(list(texts)).astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def nearest(items: pd.DataFrame, matrix: np.ndarray, query: np.ndarray, k: int = 10,
            exclude: Sequence[int] = ()) -> pd.DataFrame:
    """The ``k`` rows of ``items`` whose vectors have the highest cosine with ``query``."""
    scores = matrix @ np.asarray(query, np.float32).reshape(-1)
    if len(exclude):
        scores[np.isin(items["item_idx"].to_numpy(), np.asarray(exclude))] = -np.inf
    top = np.argsort(-scores)[:k]
    out = items.iloc[top].copy()
    out.insert(0, "cosine", scores[top])
    return out.reset_index(drop=True)


def nearest_by_text(cfg: Config, spark: Any, lake: Any, text: str, k: int = 10) -> pd.DataFrame:
    """The catalogue items whose text is nearest to a free-text query."""
    items, matrix = item_text_matrix(lake)
    return nearest(items, matrix, encode_texts(cfg, spark, [text])[0], k)


def nearest_to_item(lake: Any, item_id: str, k: int = 10) -> pd.DataFrame:
    """The items whose text is nearest to one catalogue item's (the item itself excluded)."""
    items, matrix = item_text_matrix(lake)
    where = np.flatnonzero(items["item_id"].to_numpy() == item_id)
    if not len(where):
        raise ValueError(f"item {item_id!r} has no text embedding in this lake")
    row = int(where[0])
    return nearest(items, matrix, matrix[row], k, exclude=[int(items["item_idx"].iloc[row])])


def project_2d(matrix: np.ndarray) -> np.ndarray:
    """The first two principal components (centred SVD): a map in which nearby points have
    similar text. Deterministic up to the sign of each axis, which is fixed here."""
    if len(matrix) < 2:
        return np.zeros((len(matrix), 2), np.float32)
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    axes *= np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])[:, None]
    return (centred @ axes.T).astype(np.float32)


def catalogue_map(lake: Any) -> pd.DataFrame:
    """Every embedded item with 2-D coordinates (``x``, ``y``), its first genre and popularity."""
    items, matrix = item_text_matrix(lake)
    xy = project_2d(matrix)
    items["x"], items["y"] = xy[:, 0], xy[:, 1]
    items["genre"] = [g[0] if g is not None and len(g) else "(none)" for g in items["genres"]]
    return items


# ------------------------------------------------------------------------------ training (03)
def training_runs(cfg: Config, lake: Any) -> pd.DataFrame:
    """This lake's hybrid training runs in MLflow, newest first: split, backend, workers, epochs."""
    import mlflow

    from .model.registry import mlflow_setup
    from .model.store import lake_location

    mlflow_setup(cfg.train.mlflow_uri, cfg.train.experiment)
    runs = mlflow.search_runs(experiment_names=[cfg.train.experiment], order_by=["attributes.start_time DESC"])
    if runs.empty or "tags.backend" not in runs:
        return pd.DataFrame(columns=["run_id", "status", "split", "backend", "start_time"])
    runs = runs[runs["tags.backend"].fillna("") != ""]
    if "tags.lake" in runs:
        runs = runs[runs["tags.lake"].fillna("") == lake_location(lake)]
    wanted = ("tags.split", "tags.backend", "params.train.num_workers", "params.train.epochs")
    keep = ["run_id", "status", "start_time"] + [c for c in runs.columns if c.startswith(wanted)]
    keep += [c for c in runs.columns
             if c.startswith("metrics.") and ("recall" in c or "ndcg" in c or c.endswith("loss"))]
    out = runs[keep].rename(columns=lambda c: c.split(".", 1)[1] if c.startswith(("tags.", "metrics.")) else c)
    return out.reset_index(drop=True)


def training_curves(cfg: Config, run_id: str) -> pd.DataFrame:
    """Per-epoch history of a training run: every metric MLflow recorded with a step."""
    import mlflow

    from .model.registry import mlflow_setup

    mlflow_setup(cfg.train.mlflow_uri, cfg.train.experiment)
    client = mlflow.tracking.MlflowClient()
    frames = []
    for key in client.get_run(run_id).data.metrics:
        history = client.get_metric_history(run_id, key)
        if len(history) > 1 or (history and history[0].step > 0):
            frames.append(pd.DataFrame({"metric": key, "epoch": [m.step for m in history],
                                        "value": [m.value for m in history]}))
    if not frames:
        return pd.DataFrame(columns=["metric", "epoch", "value"])
    return pd.concat(frames, ignore_index=True).sort_values(["metric", "epoch"]).reset_index(drop=True)


def backends() -> pd.DataFrame:
    """The training backends (``train.backend``) and whether each can run in this environment."""
    import importlib.util

    rows = [("torchdistributor", importlib.util.find_spec("pyspark.ml.torch") is not None,
             "pyspark.ml.torch.distributor.TorchDistributor, DDP (gloo on CPU, nccl on GPU)"),
            ("horovod", importlib.util.find_spec("horovod") is not None,
             "horovod.spark.run; wheel from scripts/build_horovod.sh"),
            ("local", True, "one process, for debugging")]
    return pd.DataFrame(rows, columns=["backend", "available", "how"])


# ---------------------------------------------------------------------------- evaluation (04)
def evaluation_metrics(lake: Any, eval_id: str | None = None) -> pd.DataFrame:
    """The rows of one evaluation (default: the latest) from ``evaluation_metrics``."""
    from pyspark.sql import functions as F

    metrics = lake.read("evaluation_metrics")
    if eval_id is None:
        eval_id = metrics.agg(F.max("eval_id")).collect()[0][0]
    return metrics.filter(F.col("eval_id") == eval_id).toPandas()


def slice_table(metrics: pd.DataFrame, metric: str = "ndcg", k: int = 10) -> pd.DataFrame:
    """Models x slices for one metric@K (users per slice in the column names)."""
    rows = metrics[(metrics["metric"] == metric) & (metrics["k"] == k)]
    users = rows.groupby("slice")["n_users"].max()
    wide = rows.pivot_table(index="model", columns="slice", values="value", aggfunc="first")
    return wide.rename(columns={s: f"{s} ({int(users[s])})" for s in wide.columns})


def metric_curves(metrics: pd.DataFrame, metric: str = "ndcg", slice_name: str = "all") -> pd.DataFrame:
    """Models x K for one metric on one slice (a curve per model)."""
    rows = metrics[(metrics["metric"] == metric) & (metrics["slice"] == slice_name) & metrics["k"].notna()]
    return rows.pivot_table(index="k", columns="model", values="value", aggfunc="first")


def html_of(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8")


def show_html(html: str, display_html: Any = None) -> Any:
    """Shows an HTML document inline: Databricks' ``displayHTML`` when given, else an isolated
    iframe in Jupyter (the report is a whole page with its own styles)."""
    if display_html is not None:
        return display_html(html)
    import html as html_lib

    from IPython.display import HTML, display

    frame = f'<iframe srcdoc="{html_lib.escape(html, quote=True)}" style="width:100%;height:900px;border:0"></iframe>'
    return display(HTML(frame))


# --------------------------------------------------------------- cold start, explanations (05)
def new_item_vector(loaded: Any, text_vector: np.ndarray, genres: Sequence[str] = ()) -> np.ndarray:
    """The item tower's vector for an item that is in no table yet: no id part (as for any item
    nobody has touched), its text vector, the "other" code for categorical fields, and the
    genres the model knows. The same tower the recommend stage scores catalogue items with."""
    import torch

    tower = loaded.model.items
    spec = tower.spec
    with torch.no_grad():
        parts = [torch.zeros(1, spec.id_dim)]
        if spec.text_in:
            text = torch.from_numpy(np.asarray(text_vector, np.float32).reshape(1, -1))
            parts.append(tower.text_proj(text.to(torch.float16).to(tower.text_proj.weight.dtype)))
        if spec.cat_vocab_sizes:
            parts.extend(emb(torch.ones(1, dtype=torch.long)) for emb in tower.cat_embs)
        if spec.genre_vocab:
            vocab = loaded.catalog.vocabs.get("genre", [])
            codes = [vocab.index(g) + 2 for g in genres if g in vocab][:4]
            parts.append(tower.genre_bag(torch.tensor([codes + [0] * (4 - len(codes))], dtype=torch.long)))
        vec = torch.nn.functional.normalize(tower.mlp(torch.cat(parts, dim=-1)), dim=-1)
    return vec.numpy()[0]


def new_item(cfg: Config, spark: Any, lake: Any, description: str, genres: Sequence[str] = (), k: int = 10
             ) -> dict[str, pd.DataFrame]:
    """A new item known only by its description: its nearest catalogue items in model space
    (``similar``) and the users whose current taste (the user tower over their history) scores
    it highest (``audience``), with the cosine each."""
    from .recommend.job import current_states, eligibility, make_payload, resolve_model
    from .recommend.score import model_user_rows, user_vectors

    loaded = resolve_model(cfg, lake)
    vec = new_item_vector(loaded, encode_texts(cfg, spark, [description])[0], genres)
    import torch

    with torch.no_grad():  # every catalogue item through the same tower, in eval mode
        items_matrix = loaded.model.eval().item_vectors(torch.arange(loaded.spec.n_items + 1)).numpy()
    facts = lake.read("item_features").select("item_idx", "item_id", "title", "genres").toPandas()
    facts = facts[facts["item_idx"] < loaded.spec.n_items]  # the served model covers every item, grown or trained
    facts = facts.sort_values("item_idx").reset_index(drop=True)
    sims = items_matrix[facts["item_idx"].to_numpy() + 1] @ vec
    top = np.argsort(-sims)[:k]
    similar = facts.iloc[top].copy()
    similar.insert(0, "cosine", sims[top])

    payload = make_payload(cfg, loaded, eligibility(cfg, lake, loaded))
    states = current_states(lake, loaded, None).toPandas()
    if len(states):
        hist = np.stack(states["hist"].to_numpy()).astype(np.int64)
        gaps = np.stack(states["gaps"].to_numpy()).astype(np.float32)
        idx = states["user_idx"].to_numpy().astype(np.int64)
        users = model_user_rows(idx, loaded.spec.n_users)  # as score_batch maps them
        u = user_vectors(payload, users, hist, gaps)
        scores = u @ vec
        order = np.argsort(-scores)[:k]
        ids = lake.read("user_index").select("user_idx", "user_id").toPandas().set_index("user_idx")["user_id"]
        audience = pd.DataFrame({"user_id": ids.reindex(states["user_idx"].to_numpy()[order]).to_numpy(),
                                 "cosine": scores[order]})
    else:
        audience = pd.DataFrame(columns=["user_id", "cosine"])
    return {"similar": similar.reset_index(drop=True), "audience": audience}


def recommendations_for(lake: Any, user_id: str | None = None) -> pd.DataFrame:
    """One user's list from ``recommendations`` (default: the first user), with the explanation
    and its evidence flattened into columns."""
    from pyspark.sql import functions as F

    recs = lake.read("recommendations")
    if user_id is None:
        user_id = recs.agg(F.min("user_id")).collect()[0][0]
    rows = recs.filter(F.col("user_id") == user_id).orderBy("rank").toPandas()
    return rows


def evidence_table(recs: pd.DataFrame) -> pd.DataFrame:
    """The evidence behind each row of a list: every field of the ``evidence`` struct as a column."""
    flat = [dict(ev) if ev is not None else {} for ev in recs["evidence"]]
    ev = pd.json_normalize([{k: _plain(v) for k, v in row.items()} for row in flat])
    return pd.concat([recs[["rank", "item_id", "score", "explanation"]].reset_index(drop=True), ev], axis=1)


def _plain(value: Any) -> Any:
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict(recursive=True).items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    return value


def ensure_split_model(cfg: Config, lake: Any, split: str) -> str:
    """The run id of this lake's latest hybrid trained on ``split`` (what ``sparkrec evaluate``
    judges); trains one first when there is none (``03_training`` normally did)."""
    from .cli import run_stages
    from .model.provenance import lake_location
    from .model.registry import ModelNotFoundError, latest_run_id

    def latest() -> str:
        return latest_run_id(cfg.train.mlflow_uri, cfg.train.experiment, cfg.data.dataset, split, lake_location(lake))

    try:
        return latest()
    except ModelNotFoundError:
        run_stages(cfg.model_copy(update={"train": cfg.train.model_copy(update={"split": split})}, deep=True),
                   ["train"])
        return latest()


# ------------------------------------------------------------------- converting and running them
CELL_MARK = "# COMMAND ----------"
HEADER = "# Databricks notebook source"


def databricks_cells(source: str) -> list[tuple[str, str]]:
    """A Databricks source-format notebook as (kind, text) cells: ``markdown`` for ``# MAGIC %md``
    cells (the prefixes removed), ``code`` for the rest."""
    lines = source.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ValueError(f"not a Databricks notebook source file (first line must be {HEADER!r})")
    cells, current = [], []
    for line in [*lines[1:], CELL_MARK]:
        if line.strip() != CELL_MARK:
            current.append(line)
            continue
        text = "\n".join(current).strip("\n")
        current = []
        if not text.strip():
            continue
        body = [ln for ln in text.splitlines() if ln.strip()]
        if body and all(ln.startswith("# MAGIC") for ln in body):
            magic = [ln[len("# MAGIC"):].removeprefix(" ") for ln in text.splitlines()]
            if magic and magic[0].strip() == "%md":
                cells.append(("markdown", "\n".join(magic[1:]).strip("\n")))
                continue
            raise ValueError(f"only %md magic cells are supported, got {magic[0]!r}")
        cells.append(("code", text))
    return cells


def to_notebook(path: str | Path) -> Any:
    """An nbformat notebook (Python 3 kernel) from a Databricks source file."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in databricks_cells(Path(path).read_text(encoding="utf-8")):
        nb.cells.append(nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text))
    return nb


def execute(path: str | Path, out_dir: str | Path, env: Mapping[str, str] | None = None,
            timeout: int = 900) -> Path:
    """Runs one notebook headless (nbclient, a fresh Python kernel) and writes the executed
    ``.ipynb`` to ``out_dir``; raises on the first cell that errors (the partial notebook, with
    the error, is written first)."""
    import nbformat
    from nbclient import NotebookClient

    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = to_notebook(path)
    target = out_dir / f"{path.stem}.ipynb"
    saved = dict(os.environ)
    os.environ.update(env or {})  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        nbformat.write(nb, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sparkrec.notebook run [--work-dir DIR] [--out DIR] NOTEBOOK...``: executes the
    notebooks in order on one work dir (the later ones reuse the lake the first built);
    ``python -m sparkrec.notebook convert NOTEBOOK... --out DIR``: writes clean ``.ipynb`` files."""
    import argparse
    import sys
    import time

    import nbformat

    parser = argparse.ArgumentParser(prog="python -m sparkrec.notebook")
    parser.add_argument("command", choices=["run", "convert"])
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--out", default="notebook-runs", help="where the .ipynb files go")
    parser.add_argument("--work-dir", help="run: the shared work dir (SPARKREC_NB_WORK_DIR)")
    parser.add_argument("--timeout", type=int, default=900, help="run: seconds a cell may take")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.command == "convert":
        out.mkdir(parents=True, exist_ok=True)
        for nb_path in args.notebooks:
            nbformat.write(to_notebook(nb_path), out / f"{Path(nb_path).stem}.ipynb")
        return 0
    env = {env_name("work_dir"): str(Path(args.work_dir).resolve())} if args.work_dir else {}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    for nb_path in args.notebooks:
        started = time.perf_counter()
        try:
            execute(nb_path, out, env, args.timeout)
        except Exception as exc:
            print(f"{nb_path}: FAILED after {time.perf_counter() - started:.1f} s: "
                  f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
            return 1
        print(f"{nb_path}: ok in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
