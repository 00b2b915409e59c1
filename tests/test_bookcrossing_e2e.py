"""Acceptance on the full Book-Crossing dataset: counts add up, a re-run adds nothing."""

from __future__ import annotations

import pytest

from sparkrec.config import load_config
from sparkrec.ingest.job import run_ingest
from sparkrec.lake import DeltaRsLake, RunContext

pytestmark = pytest.mark.slow


def test_full_bookcrossing_ingest_adds_up_and_is_idempotent(spark, datasets, tmp_path):
    cfg = load_config(None, [f"lake.root={tmp_path}", "data.dataset=bookcrossing",
                             f"data.paths.bookcrossing={datasets / 'book-crossing'}"])
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="ingest", run_id="first"))
    first = run_ingest(cfg, spark, lake)
    ratings = first.table("interactions")
    assert ratings.read == 1_149_780
    assert ratings.accepted + ratings.quarantined == 1_149_780
    assert sum(ratings.reasons.values()) == ratings.quarantined
    assert ratings.reasons["unknown_item"] > 100_000  # ~10% of ratings name books not in the list
    assert all(t.adds_up for t in first.tables)
    # The one Location with an embedded newline is quarantined as two malformed lines, not half-accepted.
    users = first.table("users")
    assert users.reasons == {"malformed_record": 2} and users.cleaned["age_cleared"] > 0

    # Unchanged files: every table is recognised by its input fingerprint and not read again.
    second = run_ingest(cfg, spark, lake.with_context(RunContext(stage="ingest", run_id="second")))
    assert all(t.skipped and t.read == 0 for t in second.tables)
    assert lake.read("interactions").count() == ratings.accepted
    quarantine = lake.read("quarantine")
    assert quarantine.filter("target_table = 'interactions'").count() == ratings.quarantined
    for name in ("interactions", "items", "users", "quarantine"):
        assert [h["sparkrec.run_id"] for h in lake.history(name)] == ["first"]
    assert lake.read("interactions", version=0).count() == ratings.accepted
