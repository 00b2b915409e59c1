"""Batch top-K recommendations with cold start and template explanations, written to Delta."""

from __future__ import annotations

from .explain import TEMPLATE_WORDS, item_facts
from .job import RECOMMENDATIONS, TABLE, recommend_for_text, run_recommend
from .topk import top_k

__all__ = ["RECOMMENDATIONS", "TABLE", "TEMPLATE_WORDS", "item_facts", "recommend_for_text", "run_recommend",
           "top_k"]
