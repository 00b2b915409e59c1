"""Validation rules: every input row ends up accepted or quarantined, with exactly one reason.

Rules are ordered; the first that fails names the row's reason, so per-reason counts add
up to the quarantined total and ``read = accepted + quarantined`` always holds. Rules that
need the whole input (duplicates, unknown items) run after the per-row ones, over the rows
still standing, so a malformed row never hides a good one as its "duplicate".

Record-level problems found by the reader (bad bytes, a wrong number of fields, a broken
quote) come first: such a line's fields cannot be trusted for any later rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from ..config import IngestConfig
from .reader import EXTRA, FILE, FILE_TIME, LINE, PROBLEM, RAW, TIMESTAMP_PATTERN, first_failing

REASON, FIELD, VALUE = "_reason", "_field", "_value"
# Ratings feed float32 weights and sums: beyond float32's range they overflow to infinity.
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Rule:
    reason: str
    field: str
    failed: Column  # true when the row breaks the rule
    value: Column  # the offending value, kept in quarantine


@dataclass
class Validated:
    """A validated input: ``rows`` carries REASON (null = accepted); call ``accepted`` /
    ``quarantine`` for the two sides. ``cleaned`` counts fields nulled but not rejected."""

    table: str
    rows: DataFrame
    output_columns: list[str]
    cleaned: dict[str, Column] = field(default_factory=dict)

    def accepted(self) -> DataFrame:
        return self.rows.filter(F.col(REASON).isNull()).select(*self.output_columns)

    def quarantine(self) -> DataFrame:
        return to_quarantine(self.rows.filter(F.col(REASON).isNotNull()), self.table)


# --------------------------------------------------------------------------- column helpers
def cleaned(col: str | None, null_tokens: Sequence[str]) -> Column:
    """Trimmed string; empty or a null token ("NULL") becomes null."""
    if col is None:
        return F.lit(None).cast("string")
    value = F.trim(F.col(f"`{col}`"))
    blank = (value == "") | value.isin(list(null_tokens)) if null_tokens else value == ""
    return F.when(blank, F.lit(None)).otherwise(value)


def unescape_html(col: Column) -> Column:
    """Five literal replacements, run only on the values holding an ``&`` (few do)."""
    unescaped = col
    for entity, char in (("&quot;", '"'), ("&#39;", "'"), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")):
        unescaped = F.replace(unescaped, F.lit(entity), F.lit(char))
    return F.when(F.instr(col, "&") > 0, unescaped).otherwise(col)


def id_rules(name: str, value: Column, pattern: str | None) -> list[Rule]:
    rules = [Rule(f"missing_{name}", name, value.isNull(), value)]
    if pattern:
        rules.append(Rule(f"malformed_{name}", name, ~value.rlike(f"^(?:{pattern})$"), value))
    return rules


def parse_timestamp(raw: Column, fmt: str, native: bool = False) -> Column:
    """``native``: the input column was a Parquet timestamp / date, rendered by the reader."""
    if native:
        return F.to_timestamp(raw, TIMESTAMP_PATTERN)
    if fmt == "unix":
        return F.when(raw.rlike(r"^-?\d+$"), F.timestamp_seconds(raw.cast("long")))
    if fmt == "unix_ms":
        return F.when(raw.rlike(r"^-?\d+$"), F.timestamp_millis(raw.cast("long")))
    return F.to_timestamp(raw, fmt)


def timestamp_rules(name: str, raw: Column, parsed: Column, cfg: IngestConfig, required: bool) -> list[Rule]:
    """``required``: the source declares the column, so an empty value is an error, not an
    event of unknown time (which would sort as the user's oldest by its file position)."""
    upper = cfg.timestamp_max or (dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    lower = F.lit(cfg.timestamp_min).cast("timestamp")
    missing = [Rule(f"missing_{name}", name, raw.isNull(), raw)] if required else []
    return [
        *missing,
        Rule(f"unparsable_{name}", name, raw.isNotNull() & parsed.isNull(), raw),
        Rule(f"{name}_out_of_range", name,
             parsed.isNotNull() & ((parsed < lower) | (parsed > F.lit(upper).cast("timestamp"))), raw),
    ]


def rating_rules(raw: Column, parsed: Column, lo: float | None, hi: float | None) -> list[Rule]:
    """A rating may be absent (implicit); present, it must be a finite number, range or not."""
    rules = [Rule("unparsable_rating", "rating", raw.isNotNull() & parsed.isNull(), raw),
             Rule("non_finite_rating", "rating", F.isnan(parsed) | (F.abs(parsed) > FLOAT32_MAX), raw)]
    if lo is not None or hi is not None:
        out = F.lit(False)
        if lo is not None:
            out = out | (parsed < lo)
        if hi is not None:
            out = out | (parsed > hi)
        rules.append(Rule("rating_out_of_range", "rating", parsed.isNotNull() & out, raw))
    return rules


def record_rules() -> list[Rule]:
    """The reader's record-level verdicts, in its order of precedence."""
    return [Rule(reason, "*", F.col(PROBLEM) == reason, F.col(EXTRA))
            for reason in ("invalid_encoding", "malformed_record", "wrong_field_count")]


# --------------------------------------------------------------------------- rule application
def apply_rules(df: DataFrame, rules: Sequence[Rule]) -> DataFrame:
    """Sets REASON/FIELD/VALUE from the first failing rule (null where all pass)."""
    return first_failing(df, [r.failed for r in rules], {REASON: [F.lit(r.reason) for r in rules],
                                                         FIELD: [F.lit(r.field) for r in rules],
                                                         VALUE: [r.value for r in rules]})


def reject_where(df: DataFrame, reason: str, field_name: str, failed: Column, value: Column) -> DataFrame:
    """Applies one more rule to rows that are still accepted."""
    hit = F.col(REASON).isNull() & F.coalesce(failed, F.lit(False))
    return df.withColumns({
        REASON: F.when(hit, F.lit(reason)).otherwise(F.col(REASON)),
        FIELD: F.when(hit, F.lit(field_name)).otherwise(F.col(FIELD)),
        VALUE: F.when(hit, value.cast("string")).otherwise(F.col(VALUE)),
    })


def reject_duplicates(df: DataFrame, key: list[str], content: list[str], key_name: str,
                      conflicts: str = "first") -> DataFrame:
    """Among accepted rows, one per key survives. Exact copies (same ``content``) are
    ``duplicate_row``; versions that disagree are a conflict, settled by ``conflicts``
    (``ingest.conflicts``): ``first`` keeps the first by file name and line, ``last_by_file_time``
    the last line of the most recently modified file (a correction in a later file wins), and
    the losers are ``duplicate_<key_name>``; ``reject`` quarantines every version of the key
    as ``conflicting_<key_name>``."""
    ok = F.col(REASON).isNull()
    if conflicts == "last_by_file_time":
        order = [F.col(FILE_TIME).desc_nulls_last(), F.col(FILE).desc(), F.col(LINE).desc()]
    else:
        order = [F.col(FILE), F.col(LINE)]
    # A row's content as one hash (a hash skips nulls, so their flags go in too: ("a", null)
    # != (null, "a")): rows are told apart and sorted by it rather than by every content
    # column (a book's title, authors list, ...) or each row's JSON rendering, as before.
    # The key leads the partitioning so the sort takes its prefix from it (a leading boolean
    # made every comparison a full one).
    df = df.withColumn("_version", F.xxhash64(*[F.col(c) for c in content], *[F.col(c).isNull() for c in content]))
    same = Window.partitionBy(*key, ok, "_version").orderBy(*order)
    by_key = Window.partitionBy(*key, ok)
    df = df.withColumns({"_dup_same": F.row_number().over(same),
                         "_dup_key": F.row_number().over(by_key.orderBy(*order)),
                         "_versions": F.min("_version").over(by_key) != F.max("_version").over(by_key)})
    df = reject_where(df, "duplicate_row", "*", F.col("_dup_same") > 1, F.lit(None))
    key_value = F.concat_ws("|", *[F.col(k).cast("string") for k in key])
    if conflicts == "reject":
        df = reject_where(df, f"conflicting_{key_name}", key_name, F.col("_versions"), key_value)
    else:
        df = reject_where(df, f"duplicate_{key_name}", key_name, F.col("_dup_key") > 1, key_value)
    return df.drop("_version", "_dup_same", "_dup_key", "_versions")


Membership = Callable[[Column], Column]  # a column of ids -> whether each is known


def reject_unknown_items(df: DataFrame, known_items: DataFrame | Membership | None, cfg: IngestConfig) -> DataFrame:
    """``known_items``: the catalogue's ``item_id`` rows, joined; or, for a batch of a few rows,
    a membership test (a set the executors hold), which skips a join against every item."""
    if known_items is None or cfg.unknown_items == "keep":
        return df
    if not isinstance(known_items, DataFrame):
        return reject_where(df, "unknown_item", "item", ~known_items(F.col("item_id")), F.col("item_id"))
    known = known_items.select("item_id").distinct().withColumn("_known", F.lit(True))
    df = df.join(known, on="item_id", how="left")
    return reject_where(df, "unknown_item", "item", F.col("_known").isNull(), F.col("item_id")).drop("_known")


def to_quarantine(rejected: DataFrame, table: str) -> DataFrame:
    """Keyed by what was rejected and why (table, file, record, reason, and which copy of an
    identical record it is), not by line: a re-run, or a line inserted above, adds no copies."""
    copy = F.row_number().over(Window.partitionBy(FILE, RAW, REASON).orderBy(LINE))
    record_id = stable_id(F.lit(table), F.col(FILE), F.col(RAW), F.col(REASON), copy)
    return rejected.select(
        record_id.alias("record_id"), F.lit(table).alias("target_table"), F.col(FILE).alias("source_file"),
        F.col(LINE).alias("source_line"), F.col(REASON).alias("reason"), F.col(FIELD).alias("field"),
        F.col(VALUE).alias("value"), F.col(RAW).alias("raw"))


def stable_id(*cols: Column) -> Column:
    """Deterministic id from content, so re-ingesting the same rows yields the same keys."""
    return F.sha2(F.concat_ws("\u001f", *[F.coalesce(c.cast("string"), F.lit("\u0000")) for c in cols]), 256)
