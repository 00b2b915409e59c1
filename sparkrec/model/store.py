"""Models in MLflow: save any fitted :class:`Recommender`, find the one to serve, crown a champion.

Every model run carries the same tags, the hybrid's training runs (``sparkrec.model.job``)
and saved baselines alike: ``kind=model``, ``model=<name>``, ``dataset``, ``split``, ``lake``
(the absolute location of the lake namespace whose tables it was fitted on) and the catalogue
and Delta versions it read (:mod:`sparkrec.model.provenance`). Item and user indices are per
lake, so a model from another lake would recommend the wrong items: every lookup filters by
``lake``, and whatever run is chosen (by name, champion or explicit run id) is checked
against this lake's catalogue before it is served. Artifacts live under ``model/`` in the run; baselines are
a JSON document plus a safetensors file (``Recommender.save``), nothing is pickled.

``sparkrec evaluate`` registers, per namespace, the model with the best NDCG@10 as the
registered model ``sparkrec-<namespace>`` with alias ``champion``; ``recommend.model``
picks what the recommend stage serves (see :func:`resolve_run`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelNotFoundError
from ..logs import get_logger, log_fields
from .provenance import check_run, data_provenance, lake_location
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


def model_tags(cfg: Config, lake: Lake, model: str, split: str,
               provenance: dict[str, str] | None = None) -> dict[str, str]:
    """The tags every model run carries; lookups filter on them. ``provenance``: the
    :func:`~sparkrec.model.provenance.data_provenance` taken when the fit started (taken now if None)."""
    return {"kind": "model", "model": model, "dataset": cfg.data.dataset, "split": split,
            "lake": lake_location(lake), **(provenance or data_provenance(lake, split))}


def log_recommender(model: Recommender, cfg: Config, lake: Lake, split: str,
                    provenance: dict[str, str] | None = None) -> str:
    """Saves a fitted model as a new MLflow run (artifacts under ``model/``); returns its run id."""
    import mlflow

    from .registry import mlflow_setup

    mlflow_setup(cfg.train.mlflow_uri, cfg.train.experiment)
    tags = model_tags(cfg, lake, model.name, split, provenance)
    with mlflow.start_run(run_name=f"{model.name}-{split}", tags=tags) as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifacts(str(model.save(Path(tmp) / "model")), artifact_path="model")
        return str(run.info.run_id)


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
        raise ModelNotFoundError(f"no {CHAMPION!r} alias on registered model {name!r} at {cfg.train.mlflow_uri}: "
                                 "run `sparkrec evaluate` first") from exc
    return ServedRun(str(version.run_id), version.tags.get("model", "hybrid"))


def checked_run(run_id: str, lake: Lake, key: str) -> dict[str, str]:
    """The run's tags, once :func:`~sparkrec.model.provenance.check_run` has accepted it for
    this lake; an id MLflow does not know is a ModelNotFoundError naming ``key``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        tags = dict(MlflowClient().get_run(run_id).data.tags)
    except MlflowException as exc:
        raise ModelNotFoundError(f"{key} = {run_id!r}: no such MLflow run ({' '.join(str(exc).split())})") from None
    check_run(tags, run_id, lake, f"{key} = {run_id!r}")
    return tags


def resolve_run(cfg: Config, lake: Lake) -> ServedRun:
    """What ``recommend.model`` names: ``hybrid`` (the latest hybrid training run of this
    dataset and lake on all events, else on any split), ``champion`` (the registered alias),
    another model name (its latest saved run of this dataset and lake) or an MLflow run id.
    ``recommend.model_run_id``, when set, is a run id and wins (the older key). Whatever is
    chosen must have been fitted on this lake's current catalogue (ProvenanceError otherwise)."""
    from .registry import mlflow_setup

    rc, tc = cfg.recommend, cfg.train
    choice = rc.model_run_id or rc.model
    key = "recommend.model_run_id" if rc.model_run_id else "recommend.model"
    mlflow_setup(tc.mlflow_uri, tc.experiment)
    if choice == CHAMPION:
        served = champion_run(cfg, lake)
    elif choice in MODEL_NAMES:
        served = _latest(cfg, lake, choice)
    else:
        served = ServedRun(choice, "")
    tags = checked_run(served.run_id, lake, key)
    return ServedRun(served.run_id, served.model or tags.get("model", "hybrid"))


def _latest(cfg: Config, lake: Lake, model: str) -> ServedRun:
    """The newest run of ``model`` on this lake; for the hybrid, a production one (trained on
    every event, split none) before one fitted on an evaluation split's train part."""
    from .registry import latest_run_id

    tc = cfg.train
    for split in (("none", None) if model == "hybrid" else (None,)):
        try:
            return ServedRun(latest_run_id(tc.mlflow_uri, tc.experiment, cfg.data.dataset, split,
                                           lake=lake_location(lake), model=model), model)
        except ModelNotFoundError:
            if split is None:
                raise
    raise AssertionError("unreachable: the last split is None")
