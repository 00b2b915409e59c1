"""Strong, tuned baselines that every model of the platform is compared against.

All share one contract (:class:`Recommender`): ``fit(train)`` on the split table or its
train part, then ``recommend(users, k, exclude_seen=True)`` returning
``user_idx int, item_idx int, rank int (1-based), score double``.
"""

from .als import ALSBaseline
from .base import RECS_SCHEMA, NotFittedError, Recommender
from .content import ContentOnly
from .ease import EASE, TooManyItemsError, ease_weights
from .itemknn import ItemKNN
from .popularity import MostPopular
from .tuning import holdout_validation

__all__ = [
    "EASE",
    "RECS_SCHEMA",
    "ALSBaseline",
    "ContentOnly",
    "ItemKNN",
    "MostPopular",
    "NotFittedError",
    "Recommender",
    "TooManyItemsError",
    "ease_weights",
    "holdout_validation",
]
