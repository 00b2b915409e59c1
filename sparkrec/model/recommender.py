"""The one contract every model of the platform keeps: fit, observe, recommend, save, load, release.

Baselines and the hybrid are judged by the same evaluator and served by the same recommend
stage, so they share this interface. Parameters (what ``fit`` learns) and per-user state (what
``observe`` builds from events) are kept apart on purpose: a model saved after evaluation or
training is loaded later, shown the users' *current* events with ``observe``, and scores them
without refitting. Saved models are plain files: a JSON document for parameters and one
safetensors file for arrays, never a pickle, so loading a model cannot run code.

This module imports nothing from ``sparkrec.baselines`` or ``sparkrec.evaluation``; both
import it, which keeps the package graph acyclic.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, cast

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import types as T

RECS_SCHEMA = T.StructType([T.StructField("user_idx", T.IntegerType()),
                            T.StructField("item_idx", T.IntegerType()),
                            T.StructField("rank", T.IntegerType()),
                            T.StructField("score", T.DoubleType())])
PARAMS_FILE, ARRAYS_FILE = "recommender.json", "arrays.safetensors"
FORMAT = 1

V = TypeVar("V")
_KINDS: dict[str, type[Recommender]] = {}


class NotFittedError(RuntimeError):
    pass


class Recommender(abc.ABC):
    """fit(train) or load(path) + observe(events), then recommend(users, k).

    ``recommend`` returns (user_idx, item_idx, rank, score) with rank 1..k, at most ``k`` rows
    per user; a user the model cannot score (no history, no factors) gets no rows, so the
    evaluation counts that as a miss rather than hiding it behind another model's fallback.
    Inputs are split-table shaped (user_idx, item_idx, rating, weight, event_time, seq,
    is_positive[, part]); with a ``part`` column only ``part = 'train'`` rows are read, so the
    whole split table and the ``events`` table are both valid inputs.
    """

    name: ClassVar[str] = "recommender"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a concrete model: ``load`` finds it by the name it saved
            _KINDS[cls.name] = cls

    @abc.abstractmethod
    def fit(self, train: DataFrame) -> Self:
        """Learns the parameters from ``train``, then observes it (``fit`` = learn + observe)."""

    @abc.abstractmethod
    def observe(self, events: DataFrame) -> Self:
        """(Re)builds the per-user state (histories, seen items) from ``events``, keeping the
        parameters: how a loaded model follows events that happened after it was fitted."""

    @abc.abstractmethod
    def recommend(self, users: DataFrame, k: int, exclude_seen: bool = True,
                  candidates: np.ndarray | None = None) -> DataFrame:
        """``candidates`` (item_idx values) restricts the lists to those items, e.g. the
        cold-item protocol ranks only items absent from train."""

    @abc.abstractmethod
    def _saved(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able parameters, named arrays): everything ``_from_saved`` needs."""

    @classmethod
    @abc.abstractmethod
    def _from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        """A model with the saved parameters and no user state yet (``observe`` builds it)."""

    def release(self) -> None:  # noqa: B027 - optional: models without cached state keep nothing to free
        """Frees cached tables and broadcasts; the parameters stay, so the model can be saved."""

    def save(self, path: str | Path) -> Path:
        """Writes ``recommender.json`` (name, parameters) and ``arrays.safetensors`` under ``path``."""
        from safetensors.numpy import save_file

        params, arrays = self._saved()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / ARRAYS_FILE))
        doc = {"model": self.name, "format": FORMAT, "params": params}
        (path / PARAMS_FILE).write_text(json.dumps(doc, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """The model saved under ``path``; on the base class, whichever kind was saved there.

        The kind's module must have been imported (``sparkrec.model.store`` imports the
        baselines); nothing is unpickled.
        """
        from safetensors.numpy import load_file

        path = Path(path)
        doc = json.loads((path / PARAMS_FILE).read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path}: saved model format {doc.get('format')!r}, this code reads {FORMAT}")
        kind = _KINDS.get(doc["model"])
        if kind is None:
            raise ValueError(f"{path}: unknown model kind {doc['model']!r} (known: {sorted(_KINDS)})")
        if not issubclass(kind, cls):
            raise TypeError(f"{path} holds a {kind.__name__}, not a {cls.__name__}")
        return cast(Self, kind._from_saved(doc["params"], load_file(str(path / ARRAYS_FILE))))

    def _fitted(self, value: V | None) -> V:
        """A state attribute, or a clear error when ``recommend`` comes before fit/observe."""
        if value is None:
            raise NotFittedError(f"{type(self).__name__}: call fit (or load, then observe) before recommend")
        return value

    @staticmethod
    def _check_k(k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
