"""Item and user text for embedding, built as Spark column expressions.

The item text is assembled from the ``item_features`` columns through a template such as
``"{title}. {authors}. {genres}. {publisher} {year}. {tags}. {description}"`` so that the
same catalogue can be described differently per model without code changes. Catalogues are
sparse (Book-Crossing has no genres, MovieLens no authors), so a missing field must not leave
``". ."`` behind: the literal text between two placeholders is split into a *joint*
(punctuation/spaces that separate fields), a *label* (words that introduce the next field) and
*closers* (brackets that end the previous one). A missing field drops its label and closers;
between two present fields the strongest of the skipped joints is kept, so ``"{publisher}
{year}. {tags}"`` without a year reads ``"Penguin. tags"``, not ``"Penguin tags"``.

Everything here is a Column expression evaluated by the executors: no row leaves Spark.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

# Template field -> item_features column. ``{attr:key}`` reads ``attributes[key]``.
FIELD_COLUMNS = {"title": "title", "authors": "authors", "genres": "genres", "publisher": "publisher",
                 "year": "year", "tags": "top_tags", "description": "description"}
LIST_SEPARATOR = ", "
_CLOSERS = ")]}»\"'"
_JOINT_CHARS = frozenset(" \t\r\n.,;:!?|/-–—·")


class TemplateError(ValueError):
    """A template that names a field the input does not have; raised before any job runs."""


@dataclass(frozen=True)
class _Slot:
    """One placeholder with the literal text that belongs to it."""

    field: str  # "title", or "attr" for attribute lookups
    key: str | None  # the attribute key for {attr:key}
    label: str  # words before the value ("by "), dropped with a missing value
    closer: str  # brackets after the value, dropped with a missing value
    joint: str  # separator towards the next present field


def _split_literal(text: str) -> tuple[str, str, str]:
    """``") by "`` -> closer ``")"``, joint ``" "``, label ``"by "``."""
    i = 0
    while i < len(text) and text[i] in _CLOSERS:
        i += 1
    j = i
    while j < len(text) and text[j] in _JOINT_CHARS:
        j += 1
    return text[:i], text[i:j], text[j:]


def parse_template(template: str) -> tuple[list[_Slot], str]:
    """The template's slots in order, and the trailing text written after the last present field."""
    parts = list(string.Formatter().parse(template))
    fields = [(name, spec) for _, name, spec, _ in parts if name is not None]
    if not fields:
        raise TemplateError(f"template {template!r} has no {{field}} placeholder")
    literals = [lit for lit, *_ in parts]  # literal before each placeholder (+ a trailing one)
    trailing = literals[len(fields)] if len(literals) > len(fields) else ""
    slots: list[_Slot] = []
    for i, (name, spec) in enumerate(fields):
        label = literals[i] if i == 0 else _split_literal(literals[i])[2]
        after = literals[i + 1] if i + 1 < len(fields) else trailing
        closer, joint, _ = _split_literal(after)
        if name == "attr":
            if not spec:
                raise TemplateError(f"template {template!r}: write attributes as {{attr:key}}")
            slots.append(_Slot("attr", spec, label, closer, joint))
        else:
            if spec:
                raise TemplateError(f"template {template!r}: {{{name}:{spec}}} takes no format spec")
            slots.append(_Slot(name, None, label, closer, joint))
    tail = _split_literal(trailing)
    return slots, tail[1] + tail[2]


def _clean(value: Column) -> Column:
    """Whitespace collapsed and trimmed; an empty result becomes null (= field missing)."""
    text = F.trim(F.regexp_replace(value, r"\s+", " "))
    return F.when(text != "", text)


def _field_value(df: DataFrame, slot: _Slot) -> Column:
    if slot.field == "attr":
        if "attributes" not in df.columns:
            raise TemplateError("template uses {attr:...} but the input has no 'attributes' column")
        return _clean(F.col("attributes").getItem(slot.key))
    column = FIELD_COLUMNS.get(slot.field, slot.field)
    if column not in df.columns:
        known = sorted({*FIELD_COLUMNS, "attr:<key>"})
        raise TemplateError(f"template field {{{slot.field}}} needs column {column!r}, which the input "
                            f"lacks; known fields: {known}")
    dtype = df.schema[column].dataType
    if isinstance(dtype, T.ArrayType):
        parts = F.filter(F.transform(F.col(column), lambda x: _clean(x.cast("string"))),
                         lambda x: x.isNotNull())
        return F.when(F.size(parts) > 0, F.array_join(parts, LIST_SEPARATOR))
    if column == "year":  # 0 is the sources' "unknown year"
        return F.when(F.col(column) > 0, F.col(column).cast("string"))
    return _clean(F.col(column).cast("string"))


def _strength(joint: str) -> int:
    return sum(1 for c in joint if not c.isspace())


def _joint_before(values: list[Column], slots: list[_Slot], i: int) -> Column:
    """The separator in front of field i: the strongest joint skipped since the last present field."""
    expr: Column | None = None
    for k in range(i - 1, -1, -1):  # CASE branches in order: the nearest present field decides
        skipped = [slots[m].joint for m in range(k, i)]
        best = max(reversed(skipped), key=_strength)  # ties: the later joint
        expr = F.when(values[k].isNotNull(), F.lit(best)) if expr is None else expr.when(
            values[k].isNotNull(), F.lit(best))
    return F.lit("") if expr is None else expr.otherwise(F.lit(""))


def item_text(df: DataFrame, template: str) -> Column:
    """The item's text per ``template``; validated against ``df``'s columns now, evaluated by Spark.

    Rows with no field at all get the empty string (not null), so they still hash and embed
    deterministically instead of disappearing from the embedding table.
    """
    slots, trailing = parse_template(template)
    values = [_field_value(df, s) for s in slots]
    pieces = [F.when(v.isNotNull(), F.concat(_joint_before(values, slots, i), F.lit(s.label), v,
                                             F.lit(s.closer)))
              for i, (s, v) in enumerate(zip(slots, values, strict=True))]
    any_present = F.coalesce(*values).isNotNull()
    text = F.concat_ws("", *pieces, F.when(any_present, F.lit(trailing)))
    return F.trim(F.regexp_replace(text, r"\s+", " "))


def text_hash(text: Column) -> Column:
    """SHA-256 of the text: what decides whether a row must be embedded again."""
    return F.sha2(text, 256)


def read_user_text(spark: SparkSession, path: str) -> DataFrame:
    """``(user_id, text)`` from a CSV (header) or Parquet file/directory, one row per user.

    Several rows for one user are joined in sorted order, so the text (and its hash) does not
    depend on file order and an unchanged file never triggers re-embedding.
    """
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        raw = spark.read.option("header", True).option("multiLine", True).option("escape", '"') \
            .option("sep", "\t" if suffix == ".tsv" else ",").csv(path)
    else:
        raw = spark.read.parquet(path)
    missing = [c for c in ("user_id", "text") if c not in raw.columns]
    if missing:
        raise ValueError(f"user text {path!r}: missing column(s) {missing}; expected user_id,text")
    rows = raw.select(F.trim(F.col("user_id").cast("string")).alias("user_id"),
                      _clean(F.col("text").cast("string")).alias("text")) \
        .where(F.col("user_id").isNotNull() & (F.col("user_id") != "") & F.col("text").isNotNull())
    return rows.groupBy("user_id").agg(
        F.array_join(F.array_sort(F.collect_list("text")), " ").alias("text"))
