"""Loading a baseline saved by :func:`sparkrec.model.store.log_recommender`.

It lives with the baselines because ``Recommender.load`` finds the class by its saved name
among the classes imported, so the loader must import every baseline; the model package
(which the baselines build on) then need not import them back.
"""

from __future__ import annotations

from ..model.recommender import Recommender


def load_recommender(run_id: str, mlflow_uri: str) -> Recommender:
    """The baseline saved in run ``run_id``, with no user state yet (call ``observe``)."""
    from ..model.registry import downloaded_model
    from . import EASE, ALSBaseline, ContentOnly, ItemKNN, MostPopular  # noqa: F401 - Recommender.load finds them

    with downloaded_model(run_id, mlflow_uri) as local:
        return Recommender.load(local)
