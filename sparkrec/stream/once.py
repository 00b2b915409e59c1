"""Exactly-once commits for micro-batches: Delta application transactions.

Structured Streaming's checkpoint replays a micro-batch whose end it did not record (a crash
mid-batch or mid-commit), with the same batch id. Delta has no multi-table transaction, so
each table's commit records (app id, batch id) as an application transaction (delta-rs
``CommitProperties(app_transactions=...)``; ``txnAppId``/``txnVersion`` on spark-delta), and a
replayed batch skips every table whose latest transaction for the app id is already at or past
its batch id: the tables it committed before the crash get nothing twice, the others get the
batch once. The app id is the streaming query's id, which its checkpoint keeps across restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ..lake import Lake
from ..logs import get_logger, log_fields

log = get_logger("stream")


@dataclass(frozen=True)
class BatchTxn:
    app_id: str
    batch_id: int

    def committed(self, lake: Lake, table: str) -> bool:
        done = lake.transaction_version(table, self.app_id)
        return done is not None and done >= self.batch_id

    def write(self, lake: Lake, table: str, write: Callable[[Lake], object]) -> bool:
        """Runs ``write(lake)`` with this batch's transaction on its commit, unless the table
        already has it; False when skipped (a replayed batch)."""
        if self.committed(lake, table):
            log_fields(log, "batch already committed to table: skipped", table=table, app_id=self.app_id,
                       batch_id=self.batch_id)
            return False
        write(lake.with_context(replace(lake.context, txn=(self.app_id, self.batch_id))))
        return True


class Timed(Protocol):
    """A batch's report: seconds per step, and the tables a replayed batch skipped."""

    steps: dict[str, float]
    skipped: list[str]


def timed_write(txn: BatchTxn, lake: Lake, table: str, report: Timed, write: Callable[[Lake], object],
                step: str | None = None) -> None:
    """:meth:`BatchTxn.write`, its seconds recorded as ``report.steps[step or table]`` and a
    skipped table in ``report.skipped``."""
    started = time.perf_counter()
    if not txn.write(lake, table, write):
        report.skipped.append(table)
    report.steps[step or table] = round(time.perf_counter() - started, 3)
