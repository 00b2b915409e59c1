"""Runs killed after some of their commits landed, on real Spark and real Delta tables: the
next run records and repairs what they left (ingest_runs rows, feature tables of two runs)."""

from __future__ import annotations

import pytest

from sparkrec.config import load_config
from sparkrec.features.job import run_features
from sparkrec.ingest.job import run_ingest
from sparkrec.lake import DeltaRsLake, LakeError, RunContext
from sparkrec.notebook import splits_off

INTERACTIONS = "user,item,rating,ts\n" + "".join(
    f"u{u},{i},{1 + (u + i) % 5},{1500000000 + 100 * u + i}\n" for u in range(6) for i in range(10, 15))
ITEMS = "id,title\n" + "".join(f"{i},Item {i}\n" for i in range(10, 15))
ONLY_LOO = splits_off()


@pytest.fixture()
def cfg(tmp_path):
    (tmp_path / "interactions.csv").write_text(INTERACTIONS)
    (tmp_path / "items.csv").write_text(ITEMS)
    return load_config(None, [
        f"lake.root={tmp_path / 'lake'}", "data.dataset=generic",
        f"data.generic.interactions.path={tmp_path / 'interactions.csv'}",
        "data.generic.interactions.columns={user: user, item: item, rating: rating, timestamp: ts}",
        f"data.generic.items.path={tmp_path / 'items.csv'}", "data.generic.items.columns={id: id, title: title}",
        "data.generic.rating_min=1", "data.generic.rating_max=5", *ONLY_LOO])


def _lake(spark, cfg, stage, run, cls=DeltaRsLake):
    return cls(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage=stage, run_id=run))


class KilledBeforeQuarantine(DeltaRsLake):
    """An ingest that dies (kill -9) after its items and interactions commits landed."""

    def upsert(self, table, *args, **kwargs):  # type: ignore[no-untyped-def]
        if table == "quarantine":
            raise SystemExit("killed")
        return super().upsert(table, *args, **kwargs)


def test_a_killed_ingest_gets_its_ingest_runs_rows_from_the_next_run(spark, cfg):
    with pytest.raises(SystemExit):
        run_ingest(cfg, spark, _lake(spark, cfg, "ingest", "killed", KilledBeforeQuarantine))
    lake = _lake(spark, cfg, "ingest", "next")
    assert lake.exists("interactions") and not lake.exists("ingest_runs")
    run_ingest(cfg, spark, lake)
    rows = {(r.run_id, r.target_table): r for r in lake.read("ingest_runs").collect()}
    assert set(rows) == {(run, t) for run in ("killed", "next") for t in ("items", "interactions")}
    killed = rows[("killed", "interactions")]
    assert (killed.read, killed.accepted, killed.inserted, killed.dataset) == (30, 30, 30, "generic")
    assert killed.source.endswith("interactions.csv")
    # The killed run never wrote its quarantine: its unchanged inputs were read again, not skipped.
    assert (rows[("next", "interactions")].inserted, rows[("next", "interactions")].unchanged) == (0, 30)
    again = cfg.model_copy(deep=True)
    again.ingest.skip_unchanged = False
    run_ingest(again, spark, _lake(spark, again, "ingest", "third"))
    assert lake.read("ingest_runs").count() == 6  # recorded once each, not again


class Intruder(DeltaRsLake):
    """A features run beside which another one overwrites ``events`` mid-way."""

    def overwrite(self, table, df):  # type: ignore[no-untyped-def]
        result = super().overwrite(table, df)
        if table == "user_features":
            other = self.with_context(RunContext(stage="features", run_id="intruder"))
            DeltaRsLake.overwrite(other, "events", self.read("events"))
        return result


def test_features_repairs_tables_left_by_two_runs_and_refuses_an_interleaved_one(spark, cfg):
    from sparkrec.features.consistency import output_tables, runs_of

    run_ingest(cfg, spark, _lake(spark, cfg, "ingest", "i1"))
    run_features(cfg, spark, _lake(spark, cfg, "features", "f1"))
    crashed = _lake(spark, cfg, "features", "f2")  # killed right after its first overwrite
    crashed.overwrite("events", crashed.read("events"))

    lake = _lake(spark, cfg, "features", "f3")
    summary = run_features(cfg, spark, lake)
    assert summary["repaired_mixed_runs"] == ["f1", "f2"]
    tables = output_tables(cfg.features)
    assert set(runs_of(lake, tables).values()) == {"f3"} and "split_temporal_loo" in tables

    with pytest.raises(LakeError, match=r"overwrote events \(run intruder\)"):
        run_features(cfg, spark, _lake(spark, cfg, "features", "f4", Intruder))
