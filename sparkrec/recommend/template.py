"""The recommend stage's explanation template, rendered in Python one row at a time.

The batch stage renders explanations in Spark SQL (:mod:`sparkrec.recommend.explain`); a request,
or a streaming micro-batch folded in by the driver, must not wait for Spark, so the same facts
(``item_facts``: title, attribute phrases, popularity note) are collected once at load and the
same sentence is built here. The tests compare this rendering with the batch stage's rows for the
same users, so the two cannot drift. The sentence names only its evidence, which is why the
source is reported as ``template``; with ``explain.llm`` on, the service's
:func:`sparkrec.serve.explain.rewrite_top` swaps in the local LLM's verified sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


