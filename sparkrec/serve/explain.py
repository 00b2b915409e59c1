"""Explanations of a served list: the batch stage's template (:mod:`sparkrec.recommend.template`)
and, with ``explain.llm`` on, the local LLM's verified sentence for the top ranks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import LLMExplainConfig
from ..recommend.llm import explain_rows
from ..recommend.template import NEW_ITEM_NOTE, SOURCE, ItemFacts, explain_row, render, shared_attributes

__all__ = ["NEW_ITEM_NOTE", "SOURCE", "ItemFacts", "explain_row", "render", "rewrite_top", "shared_attributes"]


def rewrite_top(listed: list[dict[str, Any]], llm: LLMExplainConfig, who: str, basis: str,
                vocabulary: Sequence[str]) -> list[dict[str, Any]]:
    """With ``explain.llm`` on, ranks 1..``max_rank`` get the local LLM's sentence where the
    verifier accepts it, else keep the template (``explanation_source`` says which). The batch
    job's own function does the work, so its cache (per ``who``, item and evidence, in this
    process) makes a repeated request cost no generation; the first one pays seconds per row."""
    if not llm.enabled:
        return listed
    top = [row for row in listed if row["rank"] <= llm.max_rank]
    rows = [{"evidence": row["evidence"], "user_id": who, "item_id": row["item_id"], "basis": basis,
             "explanation": row["explanation"]} for row in top]
    for row, (text, source) in zip(top, explain_rows(rows, llm, vocabulary), strict=True):
        row["explanation"], row["explanation_source"] = text, source
    return listed
