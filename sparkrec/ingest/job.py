"""The ingest stage: source files -> validated canonical Delta tables + quarantine.

Each table is MERGEd by its key, so re-ingesting the same input adds nothing, and every
table a run reads gets exactly one commit (an empty one when nothing changed), so a table's
history lists every run that touched it. A table whose input is unchanged since its last
completed ingest is not read at all (:mod:`.fingerprint`). The run's counts go to ``ingest_runs``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import reduce
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import schemas
from ..config import Config
from ..lake import CommitResult, Lake
from ..logs import get_logger, log_fields
from .canonical import validate_interactions, validate_items, validate_tags, validate_users
from .fingerprint import INPUT_KEY, completed_runs, input_fingerprint, unchanged_since_last_ingest
from .presets import resolve_source
from .provenance import keep_first_provenance
from .reader import InputError, RawInput, read_input
from .runs import commit_metadata, record_runs
from .validate import REASON, Validated

log = get_logger("ingest")


@dataclass
class TableReport:
    table: str
    source: str
    read: int
    accepted: int
    quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    cleaned: dict[str, int] = field(default_factory=dict)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    version: int = -1
    seconds: float = 0.0
    skipped: bool = False  # the input's fingerprint equals the one its last ingest recorded

    @property
    def adds_up(self) -> bool:
        return self.read == self.accepted + self.quarantined == self.accepted + sum(self.reasons.values())


@dataclass
class IngestReport:
    run_id: str
    dataset: str
    tables: list[TableReport]
    quarantine_version: int = -1

    def table(self, name: str) -> TableReport:
        return next(t for t in self.tables if t.table == name)

    def render(self) -> str:
        lines = [f"{'table':<13}{'read':>11}{'accepted':>11}{'quarantined':>12}{'inserted':>10}"
                 f"{'updated':>9}{'unchanged':>11}  reasons"]
        for t in self.tables:
            reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(t.reasons.items(), key=lambda kv: -kv[1]))
            extra = ", ".join(f"{k}={v:,}" for k, v in t.cleaned.items() if v)
            if t.skipped:
                lines.append(f"{t.table:<13}  unchanged input since its last ingest: skipped ({t.source})")
                continue
            lines.append(f"{t.table:<13}{t.read:>11,}{t.accepted:>11,}{t.quarantined:>12,}{t.inserted:>10,}"
                         f"{t.updated:>9,}{t.unchanged:>11,}  {reasons or '-'}"
                         + (f"  (accepted with fields cleared: {extra})" if extra else ""))
        return "\n".join(lines)


def _summarise(v: Validated, source: str) -> TableReport:
    aggs = [F.count(F.lit(1)).alias("n")] + [F.sum(c.cast("int")).alias(k) for k, c in v.cleaned.items()]
    by_reason = v.rows.groupBy(REASON).agg(*aggs).collect()  # a handful of rows
    reasons = {r[REASON]: int(r["n"]) for r in by_reason if r[REASON] is not None}
    accepted_rows = [r for r in by_reason if r[REASON] is None]
    accepted = int(accepted_rows[0]["n"]) if accepted_rows else 0
    cleaned = {k: int(accepted_rows[0][k] or 0) if accepted_rows else 0 for k in v.cleaned}
    read = accepted + sum(reasons.values())
    return TableReport(v.table, source, read, accepted, read - accepted, reasons, cleaned)


def _write(lake: Lake, v: Validated, report: TableReport, dataset: str, started: float,
           fingerprint: str | None = None) -> None:
    """MERGEs the accepted rows; ``fingerprint``: the input's (batch ingest), recorded so an
    unchanged input is skipped next time (a streaming batch has none, and a later ingest of the
    table then reads its input again)."""
    keys = schemas.KEYS[v.table]
    lake = counted(lake, report, dataset, started, fingerprint)
    recorded(report, lake.upsert(v.table, keep_first_provenance(lake, v.table, v.accepted(), keys), keys))


def counted(lake: Lake, report: TableReport, dataset: str, started: float, fingerprint: str | None = None) -> Lake:
    """The lake whose commits carry the table's counts: ingest_runs is rebuilt from commits
    (see .runs)."""
    meta = commit_metadata(dataset, report.source, report.read, report.accepted, report.quarantined,
                           report.reasons, report.cleaned, round(time.perf_counter() - started, 3))
    if fingerprint is not None:
        meta[INPUT_KEY] = fingerprint
    return lake.with_context(replace(lake.context, extra={**lake.context.extra, **meta}))


def recorded(report: TableReport, result: CommitResult) -> None:
    report.inserted, report.updated, report.unchanged = result.inserted, result.updated, result.unchanged
    report.version = result.version


def run_ingest(cfg: Config, spark: SparkSession, lake: Lake) -> IngestReport:
    src = resolve_source(cfg.data)
    reports: list[TableReport] = []
    rejected: list[DataFrame] = []
    persisted: list[DataFrame] = []
    settings = cfg.ingest.model_dump(mode="json")
    shared = src.model_dump(mode="json", exclude={"interactions", "items", "users", "tags"})
    completed = completed_runs(lake) if cfg.ingest.skip_unchanged else set()

    def ingest(table: str, spec: Any, validate: Callable[[RawInput], Validated],
               depends_on: str | None = None) -> str:
        """Reads, validates and MERGEs one table unless its input is unchanged; returns the
        fingerprint it has now (what a table validated against it depends on)."""
        fingerprint = input_fingerprint(spec.path, {"spec": spec.model_dump(mode="json"), "source": shared,
                                                    "ingest": settings, "table": table}, depends_on)
        if cfg.ingest.skip_unchanged and unchanged_since_last_ingest(lake, table, fingerprint, completed):
            reports.append(TableReport(table, spec.path, 0, 0, 0, skipped=True))
            log_fields(log, "table skipped: input unchanged since its last ingest", table=table, source=spec.path)
            return fingerprint
        started = time.perf_counter()
        v = validate(read_input(spark, spec.path, spec.format, spec.csv))
        # Deserialised: pyspark's MEMORY_AND_DISK also serialises the cached column batches
        # (1.6-2.5 s more on Book-Crossing's ratings, measured; DataFrame.persist's default).
        v.rows = v.rows.persist(StorageLevel.MEMORY_AND_DISK_DESER)
        persisted.append(v.rows)
        report = _summarise(v, spec.path)
        _write(lake, v, report, cfg.data.dataset, started, fingerprint)
        report.seconds = round(time.perf_counter() - started, 3)
        reports.append(report)
        rejected.append(v.quarantine())
        log_fields(log, "table ingested", **{k: val for k, val in asdict(report).items()})
        return fingerprint

    try:
        known_items, items_fp = None, None
        if src.items is not None:
            items_fp = ingest("items", src.items, lambda raw: validate_items(raw, src, cfg.ingest))
            known_items = lake.read("items").select("item_id")
        if src.users is not None:
            ingest("users", src.users, lambda raw: validate_users(raw, src, cfg.ingest))
        ingest("interactions", src.interactions,
               lambda raw: validate_interactions(raw, src, cfg.ingest, known_items), items_fp)
        if src.tags is not None:
            ingest("tags", src.tags, lambda raw: validate_tags(raw, src, cfg.ingest, known_items), items_fp)
        q_version = lake.version("quarantine") if lake.exists("quarantine") else -1
        if rejected:
            quarantine = reduce(DataFrame.unionByName, rejected)
            q_keys = schemas.KEYS["quarantine"]
            q_version = lake.upsert("quarantine", keep_first_provenance(lake, "quarantine", quarantine, q_keys),
                                    q_keys).version
    finally:
        for df in persisted:
            df.unpersist()
    report = IngestReport(lake.context.run_id, cfg.data.dataset, reports, q_version)
    record_runs(spark, lake, [t for t in schemas.KEYS if t != "quarantine"])  # this run's, and a killed one's
    _check_all_quarantined(report, cfg.ingest.fail_on_all_quarantined)
    return report


def _check_all_quarantined(report: IngestReport, fail: bool) -> None:
    """A table with rows read and none accepted is almost always a configuration mistake
    (wrong column, wrong items file): say so, and fail if ``ingest.fail_on_all_quarantined``."""
    emptied = [t for t in report.tables if t.read and not t.accepted]
    for t in emptied:
        log.warning("every row of %s was quarantined (%s of %s read; reasons %s): check the input and its "
                    "column mapping", t.table, t.quarantined, t.source, t.reasons)
    if emptied and fail:
        names = ", ".join(t.table for t in emptied)
        raise InputError(f"every row of {names} was quarantined (ingest.fail_on_all_quarantined: true); "
                         "the reasons are in the quarantine table")
