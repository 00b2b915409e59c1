"""Which ``features`` run each of the stage's output tables comes from.

Why: the stage overwrites a dozen tables one commit at a time, so a run killed half-way (or
a second run interleaving with it) leaves tables of two runs side by side: events of one,
splits or histories of another, which later stages would combine without noticing. Every
commit records its run id, so the mix is visible: the stage repairs it by recomputing every
table, and refuses to report success if another run overwrote any of its tables meanwhile.
"""

from __future__ import annotations

from ..config import FeaturesConfig
from ..lake import Lake, LakeError
from .builders import item_features_table
from .splits import enabled_splits

CORE_TABLES = ("events", "item_features", "user_features", "user_histories")


def output_tables(fc: FeaturesConfig) -> list[str]:
    """Every table this config makes the stage write (the time-cut split only with timestamps)."""
    names = list(CORE_TABLES)
    for split in enabled_splits(fc.splits, has_timestamps=True):
        names += [f"split_{split}", item_features_table(split)]
    return names


def runs_of(lake: Lake, tables: list[str]) -> dict[str, str]:
    """Table -> the run id of the write its current contents come from (existing tables only)."""
    out: dict[str, str] = {}
    for table in tables:
        if lake.exists(table):
            last = lake.last_write(table)
            out[table] = str(last.get("sparkrec.run_id")) if last else "unknown"
    return out


def mixed_runs(runs: dict[str, str]) -> dict[str, list[str]]:
    """Run id -> its tables, when the tables come from more than one run; else empty."""
    by_run: dict[str, list[str]] = {}
    for table, run in runs.items():
        by_run.setdefault(run, []).append(table)
    return by_run if len(by_run) > 1 else {}


def check_all_from(lake: Lake, tables: list[str], run_id: str) -> None:
    """Raises when a table this run wrote now holds another run's data (a concurrent run)."""
    others = {t: r for t, r in runs_of(lake, tables).items() if r != run_id}
    if others:
        detail = ", ".join(f"{t} (run {r})" for t, r in sorted(others.items()))
        raise LakeError(f"features run {run_id}: another features run overwrote {detail} while this one "
                        "ran, so the feature tables mix two runs; run features again (alone)")
