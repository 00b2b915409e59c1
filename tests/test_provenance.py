"""Model provenance (issue 15, finding 2): a model run records the lake, catalogue and table
versions it was fitted on, and recommend / evaluate refuse a model of another lake or of a
catalogue the lake no longer has, however the run was named."""

from __future__ import annotations

import json

import pytest
from pyspark.sql import functions as F

from sparkrec import schemas
from sparkrec.baselines import MostPopular
from sparkrec.cli import main
from sparkrec.config import load_config
from sparkrec.errors import ModelNotFoundError, ProvenanceError
from sparkrec.lake import DeltaRsLake, RunContext
from sparkrec.model.store import log_recommender, resolve_run

ITEMS = ["I0", "I1", "I2"]


def item_index(spark, ids: list[str]):
    return spark.createDataFrame([(item, idx) for idx, item in enumerate(ids)], schemas.ITEM_INDEX)


def tiny_lake(spark, root, ids: list[str] = ITEMS, every_table: bool = True) -> DeltaRsLake:
    """item_index and events, a few rows each, written through the real lake; with
    ``every_table`` also the other tables recommend and evaluate read."""
    lake = DeltaRsLake(spark, str(root), "shop", context=RunContext(stage="test"))
    lake.overwrite("item_index", item_index(spark, ids))
    events = spark.createDataFrame([(u, i, 5.0, 1.0, None, 10 * u + i, True)
                                    for u, i in [(0, 0), (0, 1), (1, 0), (1, 2)]], schemas.EVENTS)
    lake.overwrite("events", events)
    if every_table:
        lake.overwrite("user_index", spark.createDataFrame([("A'Connor", 0), ("u1", 1)], schemas.USER_INDEX))
        features = [(i, item) + (None,) * (len(schemas.ITEM_FEATURES.names) - 2) for i, item in enumerate(ids)]
        lake.overwrite("item_features", spark.createDataFrame(features, schemas.ITEM_FEATURES))
        lake.overwrite("split_temporal_loo", events.withColumn("part", F.lit("train")))
    return lake


def config(lake: DeltaRsLake, mlflow_dir, *extra: str):
    return load_config(None, [f"lake.root={lake.root}", "lake.namespace=shop", f"train.mlflow_uri={mlflow_dir}",
                              "logging.level=WARNING", *extra])


@pytest.fixture(scope="module")
def two_lakes(spark, tmp_path_factory):
    """Lake A with a saved most-popular model, and lake B of the same dataset and namespace."""
    tmp = tmp_path_factory.mktemp("provenance")
    a, b = tiny_lake(spark, tmp / "a", every_table=False), tiny_lake(spark, tmp / "b", ["J0", "J1", "J2", "J3"])
    cfg_a = config(a, tmp / "ml")
    model = MostPopular().fit(a.read("events").withColumn("part", F.lit("train")))
    run_id = log_recommender(model, cfg_a, a, "none")
    return a, b, run_id, tmp / "ml"


def test_a_run_records_lake_catalogue_and_data_versions(two_lakes):
    import mlflow

    a, _, run_id, _ = two_lakes
    tags = mlflow.get_run(run_id).data.tags
    assert tags["lake_root"] == a.root and tags["lake_namespace"] == "shop"
    assert tags["catalog_items"] == "3" and tags["item_index_version"] == str(a.version("item_index"))
    versions = json.loads(tags["data_versions"])
    assert versions["events"] == a.version("events") and versions["item_index"] == a.version("item_index")


def test_the_run_is_served_on_its_own_lake(two_lakes):
    a, _, run_id, ml = two_lakes
    assert resolve_run(config(a, ml, "recommend.model=most_popular"), a).run_id == run_id
    assert resolve_run(config(a, ml, f"recommend.model={run_id}"), a).model == "most_popular"


@pytest.mark.parametrize("key", ["recommend.model", "recommend.model_run_id"])
def test_a_run_id_of_another_lake_is_refused(two_lakes, key):
    _, b, run_id, ml = two_lakes
    with pytest.raises(ProvenanceError, match=f"{key} = '{run_id}': MLflow run {run_id} was fitted on lake"):
        resolve_run(config(b, ml, f"{key}={run_id}"), b)


def test_a_changed_catalogue_is_refused_and_added_items_are_not(spark, two_lakes):
    a, _, run_id, ml = two_lakes
    cfg = config(a, ml, f"recommend.model={run_id}")
    try:
        a.overwrite("item_index", item_index(spark, ["I1", "I0", "I2"]))  # two items swapped indices
        with pytest.raises(ProvenanceError, match="no longer has at the same indices"):
            resolve_run(cfg, a)
        a.overwrite("item_index", item_index(spark, [*ITEMS, "I3"]))  # a new item after the fit
        assert resolve_run(cfg, a).run_id == run_id
    finally:
        a.overwrite("item_index", item_index(spark, ITEMS))


def test_a_lake_path_with_a_quote_neither_breaks_nor_widens_the_lookup(spark, two_lakes, tmp_path):
    """Tag values used to be written into MLflow's filter string (issue 15, finding 6)."""
    _, _, run_id, ml = two_lakes
    quoted = tiny_lake(spark, tmp_path / "o'brien", every_table=False)
    cfg = config(quoted, ml, "recommend.model=most_popular")
    with pytest.raises(ModelNotFoundError, match="in lake"):  # lake A's run is not this lake's
        resolve_run(cfg, quoted)
    own = log_recommender(MostPopular().fit(quoted.read("events").withColumn("part", F.lit("train"))),
                          cfg, quoted, "none")
    assert resolve_run(cfg, quoted).run_id == own != run_id


def test_evaluate_refuses_a_hybrid_of_another_lake_before_writing(two_lakes):
    from sparkrec.evaluation.job import run_evaluate

    _, b, run_id, ml = two_lakes
    cfg = config(b, ml, "evaluation.models=[hybrid]", f"evaluation.hybrid_run_id={run_id}")
    with pytest.raises(ProvenanceError, match=f"evaluation.hybrid_run_id = '{run_id}'"):
        run_evaluate(cfg, b.spark, b)
    assert not b.exists("evaluation_recommendations")


def test_cli_recommend_one_line_exit_2(two_lakes, capsys):
    _, b, run_id, ml = two_lakes
    base = [f"lake.root={b.root}", "lake.namespace=shop", f"train.mlflow_uri={ml}", "logging.level=WARNING"]
    assert main(["recommend", *base, f"recommend.model={run_id}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"MLflow run {run_id} was fitted on lake" in err[0]
    assert main(["recommend", *base]) == 2  # recommend before train: no hybrid on lake B
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finished hybrid run" in err[0] and "run `sparkrec train" in err[0]
    assert not b.exists("recommendations")


def test_cli_recommend_serves_a_user_id_with_a_quote(two_lakes, capsys):
    """Regression (issue 15, finding 6; fixed in cdcd79f): the CLI's summary filtered by an
    interpolated SQL string and crashed on this id after the write."""
    _, b, _, ml = two_lakes
    args = [f"lake.root={b.root}", "lake.namespace=shop", f"train.mlflow_uri={ml}", "logging.level=WARNING",
            "recommend.model=most_popular", "recommend.k=2"]
    cfg = config(b, ml, *args[3:])
    log_recommender(MostPopular().fit(b.read("events").withColumn("part", F.lit("train"))), cfg, b, "none")
    assert main(["recommend", *args]) == 0
    assert "recommendations for user A'Connor" in capsys.readouterr().out
