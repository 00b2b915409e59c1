"""Batch top-K recommendations with cold start and explanations (template, or verified local-LLM), in Delta."""

from __future__ import annotations

from .explain import TEMPLATE_WORDS, item_facts, template_sentence
from .job import RECOMMENDATIONS, TABLE, read_recommendations, recommend_for_text, run_recommend
from .llm import explain_rows
from .topk import top_k
from .verify import verify

__all__ = ["RECOMMENDATIONS", "TABLE", "TEMPLATE_WORDS", "explain_rows", "item_facts", "read_recommendations",
           "recommend_for_text", "run_recommend", "template_sentence", "top_k", "verify"]
