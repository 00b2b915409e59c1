"""Explanations built only from evidence, rendered by a fixed template in Spark SQL.

Evidence comes first and the sentence is a pure function of it: the history items closest
to the recommendation in model space (cosine of item-tower vectors), the attributes the
recommendation shares with them (genre, author, publisher, tag from ``item_features``), and
the item's popularity. A template cannot invent a title or a genre, which a free-form
generator could. ``explain.llm`` (``sparkrec.recommend.llm``) may rewrite a capped number of
rows with a local model; an output is kept only if ``sparkrec.recommend.verify`` finds nothing
in it outside the evidence, otherwise the row keeps this template sentence.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .. import schemas

NO_GENRE = "(no genres listed)"
EVIDENCE = schemas.EVIDENCE
# Every word a rendered sentence may contain besides its evidence (tests check this).
TEMPLATE_WORDS = frozenset({"Because", "you", "liked", "your", "interests", "match", "and", "also",
                            "Recommended", "for"})


def _strings(col: Column) -> Column:
    return F.coalesce(col, F.array().cast("array<string>"))


def item_facts(item_features: DataFrame) -> DataFrame:
    """Per item: display title, attribute phrases, popularity note. One row per item: small."""
    genres = F.filter(_strings(F.col("genres")), lambda g: (g != NO_GENRE) & (F.trim(g) != ""))
    authors = F.transform(_strings(F.col("authors")), lambda a: F.concat(F.lit("by "), a))
    publisher = F.when(F.trim(F.col("publisher")) != "", F.array(F.concat(F.lit("published by "), "publisher")))
    tags = F.transform(_strings(F.col("top_tags")), lambda t: F.concat(F.lit("tagged "), t))
    attrs = F.array_distinct(F.concat(genres, authors, _strings(publisher), tags))
    users = F.coalesce(F.col("n_users"), F.lit(0))
    note = F.when(users > 0, F.format_string("Chosen by %d users, #%d most popular", users,
                                             F.col("popularity_rank"))).otherwise(
        F.lit("New in the catalogue, matched on its description"))
    title = F.coalesce(F.nullif(F.trim("title"), F.lit("")), F.col("item_id"))
    return item_features.select("item_idx", "item_id", title.alias("title"), attrs.alias("attrs"),
                                note.alias("popularity_note"))


def render(history: Column, shared: Column, note: Column, basis: Column) -> Column:
    """"Because you liked A and B: also Sci-Fi, by X. Chosen by 12 users, #40 most popular."."""
    lead = F.when(basis == "interests", F.lit("Because your interests match ")).otherwise(F.lit("Because you liked "))
    head = F.when(F.size(history) > 0, F.concat(lead, F.array_join(history, " and "))).otherwise(
        F.lit("Recommended for you"))
    also = F.when(F.size(shared) > 0, F.concat(F.lit(": also "), F.array_join(shared, ", "))).otherwise(F.lit(""))
    return F.concat(head, also, F.lit(". "), note, F.lit("."))


def template_sentence(evidence: Any, basis: str = "history") -> str:
    """What :func:`render` makes of one row's evidence, in plain Python (for callers outside Spark)."""
    from .verify import as_evidence

    evidence = as_evidence(evidence)
    history = list(evidence.get("history_items") or [])
    shared = list(evidence.get("shared_attributes") or [])
    note = evidence.get("popularity_note") or "New in the catalogue, matched on its description"
    lead = "Because your interests match " if basis == "interests" else "Because you liked "
    head = lead + " and ".join(history) if history else "Recommended for you"
    also = ": also " + ", ".join(shared) if shared else ""
    return f"{head}{also}. {note}."


def explain(scored: DataFrame, facts: DataFrame, max_attributes: int) -> DataFrame:
    """SCORED rows -> rows with item_id, explanation and evidence, in one pass over ``scored``.

    The evidence items are exploded, joined to the (broadcast) item facts and gathered back by
    recommendation, so the scoring job upstream runs once and no driver collect happens.
    """
    keys = ["user_idx", "user_id", "rank", "item_idx", "score", "basis"]
    ev_facts = F.broadcast(facts.select(F.col("item_idx").alias("ev"), F.col("title").alias("ev_title"),
                                        F.col("attrs").alias("ev_attrs")))
    exploded = scored.select(*keys, F.posexplode_outer("evidence_idx").alias("pos", "ev"))
    gathered = (exploded.join(ev_facts, "ev", "left").groupBy(*keys).agg(
        F.array_sort(F.collect_list(F.when(F.col("ev_title").isNotNull(),
                                           F.struct("pos", "ev_title")))).alias("titled"),
        F.flatten(F.collect_list("ev_attrs")).alias("ev_attrs")))
    rec = F.broadcast(facts.select("item_idx", "item_id", "attrs", "popularity_note"))
    joined = gathered.join(rec, "item_idx", "left")
    history = F.transform("titled", lambda s: s["ev_title"])
    shared = F.slice(F.array_intersect(_strings(F.col("attrs")), F.col("ev_attrs")), 1, max_attributes) \
        if max_attributes > 0 else F.array().cast("array<string>")
    note = F.coalesce(F.col("popularity_note"), F.lit("New in the catalogue, matched on its description"))
    return joined.select(
        *keys, "item_id", render(history, shared, note, F.col("basis")).alias("explanation"),
        F.struct(history.alias("history_items"), shared.alias("shared_attributes"),
                 note.alias("popularity_note")).alias("evidence"))
