"""``sparkrec evaluate --prequential``: the stream's recorded arrivals -> metrics table and report.

The ranks were recorded by the stream as events arrived (see :mod:`sparkrec.stream.prequential`);
this turns them into the same ``evaluation_metrics`` rows and HTML report as an offline split,
so lists refreshed by the stream and lists frozen at the last batch run sit side by side.
``n_users`` holds the number of events judged (each event is one query here).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from ..config import Config
from ..errors import UserError
from ..lake import Lake
from ..logs import get_logger, log_fields
from ..stream.prequential import TABLE, prequential_rows
from .job import METRICS_SCHEMA, METRICS_TABLE

log = get_logger("evaluate")

SPLIT = "prequential"
WINDOWS = 10
PROTOCOL = """\
Prequential (online) protocol: every event the stream accepted is one query, judged against its
user's lists at the moment it arrived, before its own batch refreshed anything.
- stream: the live list (as earlier micro-batches refreshed it, with the served model, no retraining);
- frozen: the list the last batch `recommend` run wrote (what the user would see without the stream).
HitRate@K: share of events whose item is in the top-K; NDCG@K: mean of 1/log2(1 + rank) for those.
A user or item unknown to the lists counts as a miss for both. Slices "window NN/10" split the events
into ten equal shares in arrival order: the metric over time. n_users holds the number of events.
"""


def run_prequential(cfg: Config, spark: SparkSession, lake: Lake, report_path: str | Path | None = None
                    ) -> dict[str, Any]:
    """Appends the stream's prequential metrics to ``evaluation_metrics``; writes the report."""
    from .report import write_report

    if not lake.exists(TABLE):
        raise UserError(f"no table {TABLE}: run `sparkrec stream` with a served model first "
                        "(it records each arriving event's rank in the live and frozen lists)")
    ks = sorted(set(cfg.evaluation.ks))
    eval_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    now = dt.datetime.now(dt.UTC)
    rows = [(eval_id, cfg.data.dataset, SPLIT, model, slc, metric, k, value, n, None, None, now)
            for model, slc, metric, k, value, n in prequential_rows(lake, ks, WINDOWS)]
    if not rows:
        raise UserError(f"{TABLE} holds no event yet: nothing to judge")
    commit = lake.append(METRICS_TABLE, spark.createDataFrame(rows, METRICS_SCHEMA)) if lake.exists(METRICS_TABLE) \
        else lake.overwrite(METRICS_TABLE, spark.createDataFrame(rows, METRICS_SCHEMA))
    metrics = pd.DataFrame(rows, columns=METRICS_SCHEMA.names)
    events = int(metrics.loc[metrics["slice"] == "all", "n_users"].max())
    meta = {"dataset": cfg.data.dataset, "split": SPLIT, "evaluation id": eval_id,
            "generated at": now.isoformat(timespec="seconds"), "events judged": events}
    path = Path(report_path) if report_path else Path(cfg.evaluation.report_dir) / cfg.namespace / \
        f"{SPLIT}-{eval_id}.html"
    write_report(path, metrics, None, meta, PROTOCOL)
    summary = {"eval_id": eval_id, "events": events, "rows": len(rows), "metrics_table_version": commit.version,
               "report": str(path)}
    log_fields(log, "prequential evaluation written", **summary)
    return summary
