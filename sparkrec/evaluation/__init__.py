"""Offline evaluation: ranking, beyond-accuracy and rating metrics over Spark DataFrames."""

from .metrics import (
    PROTOCOL,
    catalog_coverage,
    evaluate_all,
    intra_list_diversity,
    intra_list_diversity_at,
    novelty,
    popularity_bias,
    popularity_metrics,
    ranking_metrics,
    ranking_metrics_by,
    rating_errors,
)

__all__ = [
    "PROTOCOL",
    "catalog_coverage",
    "evaluate_all",
    "intra_list_diversity",
    "intra_list_diversity_at",
    "novelty",
    "popularity_bias",
    "popularity_metrics",
    "ranking_metrics",
    "ranking_metrics_by",
    "rating_errors",
]
