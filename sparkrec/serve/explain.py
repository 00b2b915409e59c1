"""The recommend stage's explanation template, rendered in Python for one request at a time.

The batch stage renders explanations in Spark SQL (:mod:`sparkrec.recommend.explain`); a request
must not wait for Spark, so the same facts (``item_facts``: title, attribute phrases,
popularity note) are collected once at load and the same sentence is built here. The tests
compare this rendering with the batch stage's rows for the same users, so the two cannot drift.
The sentence names only its evidence, which is why the source is reported as ``template``;
with ``explain.llm`` on, :func:`rewrite_top` swaps in the local LLM's verified sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import LLMExplainConfig
from ..recommend.llm import explain_rows

NEW_ITEM_NOTE = "New in the catalogue, matched on its description"
SOURCE = "template"


@dataclass(frozen=True)
class ItemFacts:
    """Per model row (item_idx + 1): what explanations cite; None where item_features has no row."""

    titles: list[str | None]
    attrs: list[list[str]]
    notes: list[str | None]


def shared_attributes(rec_attrs: list[str], evidence_attrs: list[str], limit: int) -> list[str]:
    """Spark's ``array_intersect(rec, evidence)``: distinct, in the recommended item's order."""
    if limit <= 0:
        return []
    pool, out = set(evidence_attrs), []
    for a in rec_attrs:
        if a in pool and a not in out:
            out.append(a)
    return out[:limit]


def render(history: list[str], shared: list[str], note: str, basis: str) -> str:
    """Mirror of ``sparkrec.recommend.explain.render``."""
    lead = "Because your interests match " if basis == "interests" else "Because you liked "
    head = lead + " and ".join(history) if history else "Recommended for you"
    also = ": also " + ", ".join(shared) if shared else ""
    return f"{head}{also}. {note}."


def explain_row(facts: ItemFacts, row: int, evidence_rows: list[int], basis: str, max_attributes: int
                ) -> dict[str, Any]:
    """(explanation, explanation_source, evidence) for recommended model row ``row``."""
    cited = [r for r in evidence_rows if r > 0 and facts.titles[r] is not None]
    history = [str(facts.titles[r]) for r in cited]
    ev_attrs = [a for r in cited for a in facts.attrs[r]]
    shared = shared_attributes(facts.attrs[row], ev_attrs, max_attributes)
    note = facts.notes[row] or NEW_ITEM_NOTE
    return {"explanation": render(history, shared, note, basis), "explanation_source": SOURCE,
            "evidence": {"history_items": history, "shared_attributes": shared, "popularity_note": note}}


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
