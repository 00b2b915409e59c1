"""Models in MLflow: save any fitted :class:`Recommender`, find the one to serve, crown a champion.

Every model run carries the same tags, the hybrid's training runs (``sparkrec.model.job``)
and saved baselines alike: ``kind=model``, ``model=<name>``, ``dataset``, ``split`` and
``lake`` (the absolute location of the lake namespace whose tables it was fitted on). Item
and user indices are per lake, so a model from another lake would recommend the wrong items:
every lookup filters by ``lake``. Artifacts live under ``model/`` in the run; baselines are
a JSON document plus a safetensors file (``Recommender.save``), nothing is pickled.

``sparkrec evaluate`` registers, per namespace, the model with the best NDCG@10 as the
registered model ``sparkrec-<namespace>`` with alias ``champion``; ``recommend.model``
picks what the recommend stage serves (see :func:`resolve_run`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..logs import get_logger, log_fields
from .recommender import Recommender

if TYPE_CHECKING:
    from ..config import Config
    from ..lake import Lake

log = get_logger("model.store")

MODEL_NAMES = ("hybrid", "most_popular", "als", "itemknn", "ease", "content_only")
CHAMPION = "champion"


@dataclass(frozen=True)
class ServedRun:
    """An MLflow run to serve and the kind of model it holds."""

    run_id: str
    model: str


def lake_location(lake: Lake) -> str:
    """The namespace's absolute location (a path/URI, or ``catalog.namespace``): the ``lake`` tag."""
    if lake.catalog:
        return f"{lake.catalog}.{lake.namespace}"
    root = lake.root
    if "://" not in root and not root.startswith(("dbfs:", "file:")):
        root = os.path.abspath(root)
    return f"{root.rstrip('/')}/{lake.namespace}"


def model_tags(cfg: Config, lake: Lake, model: str, split: str) -> dict[str, str]:
    """The tags every model run carries; lookups filter on them."""
    return {"kind": "model", "model": model, "dataset": cfg.data.dataset, "split": split,
            "lake": lake_location(lake)}


def log_recommender(model: Recommender, cfg: Config, lake: Lake, split: str) -> str:
    """Saves a fitted model as a new MLflow run (artifacts under ``model/``); returns its run id."""
    import mlflow

    from .registry import mlflow_setup

    mlflow_setup(cfg.train.mlflow_uri, cfg.train.experiment)
    with mlflow.start_run(run_name=f"{model.name}-{split}", tags=model_tags(cfg, lake, model.name, split)) as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifacts(str(model.save(Path(tmp) / "model")), artifact_path="model")
        return str(run.info.run_id)


def load_recommender(run_id: str, mlflow_uri: str) -> Recommender:
    """The baseline saved in run ``run_id``, with no user state yet (call ``observe``)."""
    import mlflow

    from .. import baselines  # noqa: F401 - imported for its models, which Recommender.load finds by name
    from .registry import mlflow_setup

    mlflow_setup(mlflow_uri, os.environ.get("SPARKREC_EXPERIMENT", "sparkrec"))
    return Recommender.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model"))


def registered_name(cfg: Config) -> str:
    return f"sparkrec-{cfg.namespace}"


def register_champion(cfg: Config, lake: Lake, run_id: str, model: str, ndcg: float) -> str:
    """Registers ``run_id`` as a new version of ``sparkrec-<namespace>`` and points the
    ``champion`` alias at it; returns the version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from .registry import mlflow_setup

    mlflow_setup(cfg.train.mlflow_uri, cfg.train.experiment)
    client, name = MlflowClient(), registered_name(cfg)
    try:
        client.create_registered_model(name, description=f"Best NDCG@10 model of namespace {cfg.namespace}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {"model": model, "lake": lake_location(lake), "dataset": cfg.data.dataset,
            "split": cfg.evaluation.split, "ndcg_at_10": f"{ndcg:.6f}"}
    version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, CHAMPION, version.version)
    log_fields(log, "champion registered", registered_model=name, version=version.version, model=model,
               run_id=run_id, ndcg_at_10=round(ndcg, 4))
    return str(version.version)


def champion_run(cfg: Config, lake: Lake) -> ServedRun:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name = registered_name(cfg)
    try:
        version = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        raise LookupError(f"no {CHAMPION!r} alias on registered model {name!r} at {cfg.train.mlflow_uri}: "
                          "run `sparkrec evaluate` first") from exc
    here = lake_location(lake)
    if version.tags.get("lake") != here:
        raise LookupError(f"the {CHAMPION} of {name!r} (version {version.version}) was fitted on lake "
                          f"{version.tags.get('lake')!r}, not {here!r}: run `sparkrec evaluate` on this lake")
    return ServedRun(str(version.run_id), version.tags.get("model", "hybrid"))


def resolve_run(cfg: Config, lake: Lake) -> ServedRun:
    """What ``recommend.model`` names: ``hybrid`` (the latest hybrid training run of this
    dataset and lake on all events, else on any split), ``champion`` (the registered alias),
    another model name (its latest saved run of this dataset and lake) or an MLflow run id.
    ``recommend.model_run_id``, when set, is a run id and wins (the older key)."""
    import mlflow

    from .registry import latest_run_id, mlflow_setup

    rc, tc = cfg.recommend, cfg.train
    choice = rc.model_run_id or rc.model
    mlflow_setup(tc.mlflow_uri, tc.experiment)
    if choice == CHAMPION:
        return champion_run(cfg, lake)
    if choice in MODEL_NAMES:
        # A production hybrid (trained on every event, split none) before one fitted on an
        # evaluation split's train part, which has not seen the held-out events.
        for split in (("none", None) if choice == "hybrid" else (None,)):
            try:
                return ServedRun(latest_run_id(tc.mlflow_uri, tc.experiment, cfg.data.dataset, split,
                                               lake=lake_location(lake), model=choice), choice)
            except LookupError:
                if split is None:
                    raise
    run = mlflow.get_run(choice)  # an unknown id raises here, naming it
    return ServedRun(choice, run.data.tags.get("model", "hybrid"))
