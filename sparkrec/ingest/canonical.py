"""Per-table validation: raw source columns -> canonical tables (see sparkrec.schemas)."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .. import schemas
from ..config import GenericSource, IngestConfig
from .reader import CARRIED, FILE, LINE, RawInput, require_columns
from .validate import (
    Membership,
    Validated,
    apply_rules,
    cleaned,
    id_rules,
    parse_timestamp,
    rating_rules,
    record_rules,
    reject_duplicates,
    reject_unknown_items,
    stable_id,
    timestamp_rules,
    unescape_html,
)


def _provenance() -> list[F.Column]:
    return [F.col(FILE).alias("source_file"), F.col(LINE).alias("source_line")]


def _item_id(col: str, src: GenericSource) -> F.Column:
    value = cleaned(col, src.null_tokens)
    return F.upper(value) if src.item_id_uppercase else value


def _event_time(raw: RawInput, column: str | None, fmt: str) -> F.Column:
    """Native Parquet timestamps come as instants, whatever ``timestamp_format`` says."""
    return parse_timestamp(F.col("ts_raw"), fmt, native=column in raw.timestamp_columns)


def _keep(raw: RawInput, **columns: F.Column) -> DataFrame:
    return raw.df.select(*[c.alias(n) for n, c in columns.items()], *CARRIED)


def validate_interactions(raw: RawInput, src: GenericSource, cfg: IngestConfig,
                          known_items: DataFrame | Membership | None) -> Validated:
    spec = src.interactions
    cols = spec.columns
    require_columns(raw, cols.model_dump())
    nt = src.null_tokens
    df = _keep(raw, user_id=cleaned(cols.user, nt), item_id=_item_id(cols.item, src),
               rating_raw=cleaned(cols.rating, nt), ts_raw=cleaned(cols.timestamp, nt),
               event_id_raw=cleaned(cols.event_id, nt))
    df = df.withColumns({"rating": F.col("rating_raw").cast("double"),
                         "event_time": _event_time(raw, cols.timestamp, spec.timestamp_format)})
    rules = [*record_rules(),
             *id_rules("user_id", F.col("user_id"), src.user_id_pattern),
             *id_rules("item_id", F.col("item_id"), src.item_id_pattern)]
    if cols.event_id:
        rules += id_rules("event_id", F.col("event_id_raw"), None)
    rules += rating_rules(F.col("rating_raw"), F.col("rating"), src.rating_min, src.rating_max)
    rules += timestamp_rules("timestamp", F.col("ts_raw"), F.col("event_time"), cfg, cols.timestamp is not None)
    df = apply_rules(df, rules)
    # Without a source event id, an event is (user, item, time): the same triple twice is one event.
    event_id = F.col("event_id_raw") if cols.event_id else stable_id(
        F.col("user_id"), F.col("item_id"), F.col("event_time"))
    df = df.withColumn("event_id", event_id)
    df = reject_unknown_items(df, known_items, cfg)
    df = reject_duplicates(df, ["event_id"], ["rating"], "event", cfg.conflicts)
    out = df.select("event_id", "user_id", "item_id", "rating", "event_time", *_provenance(),
                    *CARRIED, "_reason", "_field", "_value")
    return Validated("interactions", out, schemas.INTERACTIONS.names)


def _split_list(value: F.Column, sep: str, drop: tuple[str, ...] = ()) -> F.Column:
    parts = F.filter(F.transform(F.split(value, _regex_literal(sep)), F.trim),
                     lambda p: (p != "") & ~p.isin(list(drop)) if drop else p != "")
    return F.when(value.isNull(), F.array().cast("array<string>")).otherwise(parts)


def _regex_literal(sep: str) -> str:
    return "".join("\\" + ch if ch in r"\.^$|?*+()[]{}" else ch for ch in sep)


def validate_items(raw: RawInput, src: GenericSource, cfg: IngestConfig) -> Validated:
    assert src.items is not None
    cols = src.items.columns
    roles = ("id", "title", "description", "year", "authors", "genres", "publisher")
    require_columns(raw, {role: getattr(cols, role) for role in roles})
    require_columns(raw, {f"attribute {n}": n for n in [*cols.text_fields, *cols.categorical_fields]})
    nt = src.null_tokens
    text = (lambda c: unescape_html(cleaned(c, nt))) if src.unescape_html else (lambda c: cleaned(c, nt))
    title = text(cols.title)
    if cols.year:
        year_raw = cleaned(cols.year, nt)
    elif cols.year_from_title:
        year_raw = F.nullif(F.regexp_extract(title, r"\((\d{4})\)\s*$", 1), F.lit(""))
    else:
        year_raw = F.lit(None).cast("string")
    attr_names = [*cols.text_fields, *cols.categorical_fields]
    attributes = (F.map_filter(F.create_map(*[x for n in attr_names for x in (F.lit(n), text(n))]),
                               lambda k, v: v.isNotNull())
                  if attr_names else F.create_map().cast("map<string,string>"))
    df = _keep(raw, item_id=_item_id(cols.id, src), title=title, description=text(cols.description),
               authors=_split_list(text(cols.authors), cols.list_separator),
               genres=_split_list(text(cols.genres), cols.list_separator, drop=("(no genres listed)",)),
               publisher=text(cols.publisher), year_raw=year_raw, attributes=attributes)
    year = F.col("year_raw").cast("int")
    valid_year = year.between(cfg.year_min, dt.date.today().year + 1)
    df = df.withColumn("year", F.when(valid_year, year))
    df = apply_rules(df, [*record_rules(), *id_rules("item_id", F.col("item_id"), src.item_id_pattern)])
    df = reject_duplicates(df, ["item_id"], ["title", "description", "authors", "genres", "publisher", "year_raw"],
                           "item_id", cfg.conflicts)
    df = df.select(*[c for c in schemas.ITEMS.names if c not in ("source_file", "source_line")],
                   *_provenance(), "year_raw", *CARRIED, "_reason", "_field", "_value")
    cleaned_counts = {"year_cleared": F.col("year_raw").isNotNull() & F.col("year").isNull()}
    return Validated("items", df, schemas.ITEMS.names, cleaned_counts)


def validate_users(raw: RawInput, src: GenericSource, cfg: IngestConfig) -> Validated:
    assert src.users is not None
    cols = src.users.columns
    require_columns(raw, cols.model_dump())
    nt = src.null_tokens
    df = _keep(raw, user_id=cleaned(cols.id, nt), location=cleaned(cols.location, nt),
               age_raw=cleaned(cols.age, nt))
    age = F.col("age_raw").cast("int")
    df = df.withColumn("age", F.when(age.between(cfg.age_min, cfg.age_max), age))
    df = apply_rules(df, [*record_rules(), *id_rules("user_id", F.col("user_id"), src.user_id_pattern)])
    df = reject_duplicates(df, ["user_id"], ["location", "age_raw"], "user_id", cfg.conflicts)
    df = df.select("user_id", "location", "age", *_provenance(), "age_raw",
                   *CARRIED, "_reason", "_field", "_value")
    cleaned_counts = {"age_cleared": F.col("age_raw").isNotNull() & F.col("age").isNull()}
    return Validated("users", df, schemas.USERS.names, cleaned_counts)


def validate_tags(raw: RawInput, src: GenericSource, cfg: IngestConfig,
                  known_items: DataFrame | None) -> Validated:
    assert src.tags is not None
    spec = src.tags
    cols = spec.columns
    require_columns(raw, cols.model_dump())
    nt = src.null_tokens
    df = _keep(raw, user_id=cleaned(cols.user, nt), item_id=_item_id(cols.item, src),
               tag=cleaned(cols.tag, nt), ts_raw=cleaned(cols.timestamp, nt))
    df = df.withColumn("event_time", _event_time(raw, cols.timestamp, spec.timestamp_format))
    rules = [*record_rules(),
             *id_rules("user_id", F.col("user_id"), src.user_id_pattern),
             *id_rules("item_id", F.col("item_id"), src.item_id_pattern),
             *id_rules("tag", F.col("tag"), None),
             *timestamp_rules("timestamp", F.col("ts_raw"), F.col("event_time"), cfg, cols.timestamp is not None)]
    df = apply_rules(df, rules)
    df = df.withColumn("tag_id", stable_id(F.col("user_id"), F.col("item_id"), F.lower(F.col("tag")),
                                           F.col("event_time")))
    df = reject_unknown_items(df, known_items, cfg)
    df = reject_duplicates(df, ["tag_id"], ["tag"], "tag", cfg.conflicts)
    df = df.select("tag_id", "user_id", "item_id", "tag", "event_time", *_provenance(),
                   *CARRIED, "_reason", "_field", "_value")
    return Validated("tags", df, schemas.TAGS.names)
