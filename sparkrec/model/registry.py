"""Saving and loading trained models: safetensors weights + JSON spec + catalogue, in MLflow.

Nothing here unpickles: weights load with safetensors, the spec is JSON, the catalogue is a
safetensors file with JSON metadata. A model is addressed by its MLflow run id.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelNotFoundError
from .build import build_model
from .data import Catalog
from .head import LinearHead
from .towers import ModelSpec, TwoTower

WEIGHTS, SPEC, HEAD = "weights.safetensors", "spec.json", "head.safetensors"
CATALOG, ITEM_VECTORS = "catalog.safetensors", "item_vectors.safetensors"


@dataclass
class LoadedModel:
    model: TwoTower
    catalog: Catalog
    spec: ModelSpec
    meta: dict[str, Any]
    head: LinearHead | None = None  # the collaborative head; None: towers only

    @property
    def tower_weight(self) -> float:
        return float(self.meta.get("blend", {}).get("w_tower", 1.0))

    @property
    def version(self) -> str:
        return str(self.meta.get("run_id", "local"))


def load_weights(spec: ModelSpec, catalog: Catalog, weights: bytes, device: str = "cpu") -> TwoTower:
    """The towers from safetensors bytes, in eval mode."""
    from safetensors.torch import load

    model = build_model(spec, catalog, torch.device(device))
    missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in load(weights).items()}, strict=True)
    assert not missing and not unexpected
    return model.eval()


def save_model_dir(path: Path, spec: ModelSpec, weights: bytes, catalog: Catalog, meta: dict[str, Any],
                   head: LinearHead | None = None) -> Path:
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / WEIGHTS).write_bytes(weights)
    if head is not None:
        save_numpy(head.tensors(), str(path / HEAD))
        meta = {**meta, "head_params": head.params}
    (path / SPEC).write_text(json.dumps({"spec": spec.to_dict(), "meta": meta}, indent=2, default=str))
    catalog.save(path / CATALOG)
    loaded = load_model_dir(path)
    from .build import all_item_vectors

    save_file({"vectors": all_item_vectors(loaded.model).contiguous()}, str(path / ITEM_VECTORS))
    return path


def load_model_dir(path: str | Path, device: str = "cpu") -> LoadedModel:
    path = Path(path)
    doc = json.loads((path / SPEC).read_text())
    spec = ModelSpec.from_dict(doc["spec"])
    catalog = Catalog.load(path / CATALOG)
    model = load_weights(spec, catalog, (path / WEIGHTS).read_bytes(), device)
    meta = doc.get("meta", {})
    head = None
    if (path / HEAD).exists():
        from safetensors.numpy import load_file

        head = LinearHead.from_tensors(load_file(str(path / HEAD)), meta.get("head_params", {}))
    return LoadedModel(model, catalog, spec, meta, head)


def mlflow_name(metric: str) -> str:
    """MLflow metric names allow no '@': recall@20 -> recall_at_20 (what training logs and
    what the evaluation report reads back)."""
    return metric.replace("@", "_at_")


def mlflow_setup(uri: str, experiment: str) -> None:
    """A plain directory means a local, serverless store: SQLite for runs and metrics (MLflow 3
    retired its file store) and a folder beside it for artifacts. URIs are used as given."""
    import mlflow

    artifacts = None
    if "://" not in uri and not uri.startswith("databricks"):
        root = Path(uri).resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
    mlflow.set_tracking_uri(uri)
    if artifacts and mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=f"{artifacts}/{experiment}")
    mlflow.set_experiment(experiment)


# A run's artifacts never change, so a process that serves one model batch after batch (the
# stream, the service) downloads and loads it once. Two entries: the served model and the
# next one during a switch.
_LOADED: dict[tuple[str, str, str], LoadedModel] = {}
_LOADED_MAX = 2


@contextmanager
def downloaded_model(run_id: str, mlflow_uri: str) -> Iterator[Path]:
    """The run's ``model/`` artifacts in a local directory that is deleted on exit; the model
    must be read into memory inside the ``with``.

    ``download_artifacts`` without a destination leaves its copy in a new temporary directory
    for good, so every process that loaded a model (each recommend job, the stream, the
    service, a reload) left a copy in /tmp (1.3 GB for a Book-Crossing model with its head):
    ~45 GB of them had piled up on one machine when a CI run there failed with a full disk."""
    import mlflow

    mlflow_setup(mlflow_uri, os.environ.get("SPARKREC_EXPERIMENT", "sparkrec"))
    with tempfile.TemporaryDirectory(prefix="sparkrec-model-") as tmp:
        yield Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=tmp))


def load_model(run_id: str, mlflow_uri: str = "mlruns", device: str = "cpu") -> LoadedModel:
    """Downloads the run's ``model/`` artifacts and loads them (no pickle involved); once per
    process and run (callers only read the model)."""
    key = (run_id, str(mlflow_uri), device)
    if key in _LOADED:
        return _LOADED[key]
    with downloaded_model(run_id, mlflow_uri) as local:
        loaded = load_model_dir(local, device)
    loaded.meta.setdefault("run_id", run_id)
    while len(_LOADED) >= _LOADED_MAX:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = loaded
    return loaded


def _tag(runs: Any, name: str) -> Any:
    """Column ``tags.<name>`` of an MLflow runs frame, "" where a run lacks the tag."""
    import pandas as pd

    column = f"tags.{name}"
    return runs[column].fillna("") if column in runs else pd.Series("", index=runs.index, dtype=object)


def latest_run_id(mlflow_uri: str, experiment: str, dataset: str | None = None, split: str | None = None,
                  lake: str | None = None, model: str = "hybrid") -> str:
    """The newest finished run of ``model``, optionally of one dataset, split and lake.

    Evaluation asks for the split: a model trained on another split has seen its test rows.
    ``lake`` (the namespace's location, tag ``lake``) keeps a model fitted on another lake's
    tables, whose item indices mean other items, from being served. Hybrid training runs carry
    a ``backend`` tag and baselines saved by ``sparkrec.model.store`` a ``model`` tag, so
    evaluation runs are never returned.

    Tag values are compared here, not written into MLflow's filter string: a lake path with a
    quote in it must neither break the search nor widen it to other lakes' runs.
    """
    import mlflow

    mlflow_setup(mlflow_uri, experiment)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    keep = (_tag(runs, "backend") != "") if model == "hybrid" else (_tag(runs, "model") == model)
    for tag, value in (("dataset", dataset), ("split", split), ("lake", lake)):
        if value:
            keep &= _tag(runs, tag) == value
    runs = runs[keep]
    if runs.empty:
        what = (f" for dataset {dataset!r}" if dataset else "") + (f" on split {split!r}" if split else "")
        what += f" in lake {lake}" if lake else ""
        command = ("sparkrec train" + (f" train.split={split}" if split else "") if model == "hybrid"
                   else "sparkrec evaluate" + (f" evaluation.split={split}" if split else ""))
        raise ModelNotFoundError(f"no finished {model} run in MLflow experiment {experiment!r} at {mlflow_uri}{what}: "
                                 f"run `{command}` first")
    return str(runs.iloc[0]["run_id"])
