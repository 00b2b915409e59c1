"""Every model is servable: save/load round trips, the champion, `recommend.model`, training on all data.

Real Spark, real Delta, a real MLflow store (SQLite + artifact folder), on the bundled sample
and on a small generic CSV source.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkrec.baselines import EASE, ALSBaseline, ContentOnly, ItemKNN, MostPopular
from sparkrec.model.recommender import Recommender

K = 10


@pytest.fixture(scope="module")
def small_split(sample_lake):
    """The sample's temporal split on items with >= 5 positives: EASE's inverse stays small."""
    _, lake = sample_lake
    split = lake.read("split_temporal_loo")
    popular = (split.filter("is_positive and part = 'train'").groupBy("item_idx").count()
               .filter(F.col("count") >= 5).select("item_idx"))
    split = split.join(popular, "item_idx").cache()
    yield split
    split.unpersist()


def _vectors(spark, split):
    items = sorted(r[0] for r in split.select("item_idx").distinct().collect())
    rng = np.random.default_rng(0)
    rows = [(int(i), rng.normal(size=8).astype(np.float32).tolist()) for i in items]
    return spark.createDataFrame(rows, T.StructType([T.StructField("item_idx", T.IntegerType()),
                                                     T.StructField("vector", T.ArrayType(T.FloatType()))]))


def _lists(recs) -> pd.DataFrame:
    return recs.toPandas().sort_values(["user_idx", "rank"]).reset_index(drop=True)


@pytest.mark.parametrize("name", ["most_popular", "als", "itemknn", "ease", "content_only"])
def test_a_saved_baseline_reloads_and_gives_identical_lists(spark, small_split, tmp_path, name):
    makers = {"most_popular": lambda: MostPopular(),
              "als": lambda: ALSBaseline([8], [0.1], [1.0], max_iter=5),
              "itemknn": lambda: ItemKNN(neighbours=20),
              "ease": lambda: EASE([50.0, 250.0], holdout="random"),
              "content_only": lambda: ContentOnly(_vectors(spark, small_split))}
    users = small_split.filter("part = 'test'").select("user_idx").distinct()
    model = makers[name]().fit(small_split)
    before = _lists(model.recommend(users, K))
    path = model.save(tmp_path / name)
    model.release()
    loaded = Recommender.load(path)  # the base class finds the kind that was saved
    assert type(loaded) is type(model)
    after = _lists(loaded.observe(small_split).recommend(users, K))
    loaded.release()
    assert len(before) > 0 and before["user_idx"].nunique() > 50
    pd.testing.assert_frame_equal(before[["user_idx", "rank", "item_idx"]], after[["user_idx", "rank", "item_idx"]])
    np.testing.assert_allclose(before["score"], after["score"], rtol=1e-6)
    assert not list(path.glob("*.pkl")) and sorted(p.name for p in path.iterdir()) == \
        ["arrays.safetensors", "recommender.json"]


def test_loading_a_model_from_mlflow_leaves_no_copy_behind(sample_lake, small_split, tmp_path, monkeypatch):
    """MLflow copies a run's artifacts into a temporary directory to load them: the loaders
    delete it (it used to stay, one model copy a load, until a CI run found the disk full)."""
    import tempfile

    from sparkrec.baselines.saved import load_recommender
    from sparkrec.model.registry import downloaded_model
    from sparkrec.model.store import log_recommender

    cfg, lake = sample_lake
    cfg = cfg.model_copy(deep=True)
    cfg.train.mlflow_uri = str(tmp_path / "ml")
    run_id = log_recommender(MostPopular().fit(small_split), cfg, lake, "temporal_loo")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert type(load_recommender(run_id, cfg.train.mlflow_uri)) is MostPopular
    assert list(scratch.iterdir()) == []
    with downloaded_model(run_id, cfg.train.mlflow_uri) as local:  # what the hybrid's load_model reads from
        assert local.is_relative_to(scratch) and (local / "recommender.json").is_file()
    assert list(scratch.iterdir()) == []


def test_als_fold_in_reproduces_sparks_user_factors(small_split):
    """Serving folds users in against the item factors; that must be Spark's own last step."""
    from pyspark.ml.recommendation import ALS

    from sparkrec.baselines.base import positives
    from sparkrec.model.factors import fold_in

    pos = positives(small_split).cache()
    model = ALS(rank=8, maxIter=8, regParam=0.1, alpha=1.0, implicitPrefs=True, userCol="user_idx",
                itemCol="item_idx", ratingCol="weight", seed=1).fit(pos)
    items = model.itemFactors.toPandas().sort_values("id")
    ids, v = items["id"].to_numpy(), np.stack(items["features"].to_numpy()).astype(np.float32)
    users = model.userFactors.toPandas().head(20)
    hist = pos.toPandas()
    mine = [hist[hist["user_idx"] == u] for u in users["id"]]
    indptr = np.concatenate([[0], np.cumsum([len(m) for m in mine])])
    cols = np.searchsorted(ids, np.concatenate([m["item_idx"].to_numpy() for m in mine]))
    weights = np.concatenate([m["weight"].to_numpy(np.float32) for m in mine])
    got = fold_in(v, indptr, cols, weights, 0.1, 1.0)  # every user in one batched solve
    np.testing.assert_allclose(got, np.stack(users["features"].to_numpy()), rtol=1e-3, atol=1e-4)
    pos.unpersist()


@pytest.fixture(scope="module")
def champion(spark, sample_copy):
    """The sample evaluated with two baselines only: one of them is the champion."""
    from sparkrec.evaluation.job import run_evaluate

    cfg, lake, root = sample_copy("serving")
    cfg.evaluation.models, cfg.evaluation.ks, cfg.evaluation.ease_lambdas = ["most_popular", "ease"], [10], [250.0]
    cfg.recommend.k = K
    summary = run_evaluate(cfg, spark, lake, root / "report.html")
    return cfg, lake, summary


def _served(cfg, spark, lake, model: str):
    from sparkrec.recommend import run_recommend

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.recommend.model = model
    return run_recommend(run_cfg, spark, lake)


def test_evaluate_registers_the_best_ndcg_model_as_champion(champion):
    from mlflow.tracking import MlflowClient

    from sparkrec.model.store import lake_location

    cfg, lake, summary = champion
    m = lake.read("evaluation_metrics").filter(F.col("eval_id") == summary["eval_id"]).toPandas()
    ndcg = m[(m["slice"] == "all") & (m["metric"] == "ndcg") & (m["k"] == 10)].set_index("model")["value"]
    assert summary["champion"] == ndcg.idxmax()
    version = MlflowClient().get_model_version_by_alias(f"sparkrec-{cfg.namespace}", "champion")
    assert version.tags["model"] == summary["champion"] and version.tags["lake"] == lake_location(lake)
    run = MlflowClient().get_run(version.run_id)
    assert {k: run.data.tags[k] for k in ("kind", "model", "dataset", "split")} == \
        {"kind": "model", "model": summary["champion"], "dataset": cfg.data.dataset, "split": "temporal_loo"}
    # the metrics rows name the saved run that produced them
    assert set(m.loc[m["model"] == summary["champion"], "model_version"]) == {version.run_id}


def test_recommend_serves_the_champion_baseline_with_explanations(champion, spark):
    from mlflow.tracking import MlflowClient

    cfg, lake, summary = champion
    served = _served(cfg, spark, lake, "champion")
    version = MlflowClient().get_model_version_by_alias(f"sparkrec-{cfg.namespace}", "champion")
    assert served["model"] == summary["champion"] and served["model_run_id"] == version.run_id
    recs = lake.read("recommendations").toPandas()
    n_users = lake.read("events").filter("is_positive").select("user_idx").distinct().count()
    assert recs["user_id"].nunique() == n_users and (recs.groupby("user_id").size() == K).all()
    assert set(recs["model_version"]) == {version.run_id}
    assert recs["explanation"].str.len().min() > 0
    seen = lake.read("events").select("user_idx", "item_idx").toPandas()
    assert recs.merge(seen, on=["user_idx", "item_idx"]).empty
    # evidence items come from the user's own positive history
    titles = lake.read("item_features").select("item_idx", "title").toPandas()
    liked = (lake.read("events").filter("is_positive").select("user_idx", "item_idx").toPandas()
             .merge(titles, on="item_idx").groupby("user_idx")["title"].agg(set))
    cited = recs.assign(ev=[list(e["history_items"]) for e in recs["evidence"]])
    assert cited["ev"].map(len).sum() > 0
    assert all(set(ev) <= liked[u] for u, ev in zip(cited["user_idx"], cited["ev"], strict=True))


def test_recommend_model_by_name_and_by_run_id(champion, spark):
    cfg, lake, _ = champion
    by_name = _served(cfg, spark, lake, "most_popular")
    assert by_name["model"] == "most_popular"
    assert set(lake.read("recommendations").toPandas()["model_version"]) == {by_name["model_run_id"]}
    by_id = _served(cfg, spark, lake, by_name["model_run_id"])
    assert by_id["model"] == "most_popular" and by_id["model_run_id"] == by_name["model_run_id"]


def test_models_from_another_lake_are_never_served(champion, spark, tmp_path):
    from sparkrec.lake import DeltaRsLake
    from sparkrec.model.store import resolve_run

    cfg, _, _ = champion
    other = DeltaRsLake(spark, str(tmp_path / "other"), cfg.namespace)
    for model in ("most_popular", "champion"):
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.recommend.model = model
        with pytest.raises(LookupError, match="lake"):
            resolve_run(run_cfg, other)


def test_text_space_evidence_is_the_nearest_history_item(spark, lake):
    """With item_embeddings, a baseline's evidence is the history item nearest by text cosine."""
    from sparkrec.recommend.baseline import with_evidence

    vectors = [(0, [1.0, 0.0]), (1, [0.0, 1.0]), (2, [0.7, 0.7]), (3, [0.9, 0.1])]
    lake.overwrite("item_embeddings", spark.createDataFrame(vectors, "item_idx int, vector array<float>"))
    recs = spark.createDataFrame([(7, 3, 1, 1.0), (7, 1, 2, 0.5)], "user_idx int, item_idx int, rank int, score double")
    history = spark.createDataFrame([(7, 0), (7, 1), (7, 2)], "user_idx int, i int")
    got = {r["item_idx"]: r["evidence_idx"] for r in with_evidence(recs, history, lake, 2).collect()}
    # item 3: cos 0.99 with 0, 0.78 with 2; item 1 is never its own evidence: 2 (0.71), then 0 (0.0)
    assert got == {3: [0, 2], 1: [2, 0]}
    # the HTTP service cites the same items in the same order (sparkrec.serve.baseline)
    from sparkrec.serve.baseline import load_evidence

    assert {item: load_evidence(lake).cite(np.array([0, 1, 2]), item, 2) for item in (3, 1)} == got


def test_pipeline_on_a_generic_csv_trains_on_all_events_and_serves_everyone(spark, tmp_path):
    import mlflow

    from sparkrec.cli import PIPELINE, run_stages
    from sparkrec.config import load_config
    from sparkrec.lake import DeltaRsLake
    from sparkrec.model.registry import load_model

    rng = np.random.default_rng(3)
    n_users, n_items = 30, 40
    rows = [(f"u{u}", f"i{i}", float(rng.integers(1, 6)), 1_600_000_000 + 3600 * (u * n_items + i))
            for u in range(n_users) for i in rng.choice(n_items, size=int(rng.integers(4, 12)), replace=False)]
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_csv(tmp_path / "events.csv", index=False)
    pd.DataFrame({"id": [f"i{i}" for i in range(n_items)], "title": [f"Item number {i}" for i in range(n_items)],
                  "genres": ["Drama|Comedy" if i % 2 else "Sci-Fi" for i in range(n_items)],
                  "brand": [f"brand {i % 4}" for i in range(n_items)], "sku": [f"sku-{i}" for i in range(n_items)]}
                 ).to_csv(tmp_path / "items.csv", index=False)
    cfg = load_config(None, [
        f"lake.root={tmp_path / 'lake'}", "lake.namespace=shop", "data.dataset=generic",
        f"data.generic.interactions.path={tmp_path / 'events.csv'}",
        "data.generic.interactions.columns={user: user, item: item, rating: rating, timestamp: timestamp}",
        f"data.generic.items.path={tmp_path / 'items.csv'}", "data.generic.items.columns={id: id, title: title, "
        "genres: genres, categorical_fields: [brand, sku]}", "data.generic.rating_min=1", "data.generic.rating_max=5",
        f"train.workdir={tmp_path / 'work'}", f"train.mlflow_uri={tmp_path / 'ml'}", "train.backend=local",
        "train.epochs=2", "train.progress=false", "model.history=10", f"recommend.k={K}"])
    assert cfg.train.split == "none"  # the default: production trains on everything
    results = run_stages(cfg, PIPELINE)
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace)
    run = mlflow.get_run(results["train"]["run_id"])
    assert run.data.tags["split"] == "none" and run.data.tags["model"] == "hybrid"
    # The source's categorical fields reach the model; one unique per item carries nothing.
    catalog = load_model(results["train"]["run_id"], cfg.train.mlflow_uri).catalog
    assert "attr:brand" in catalog.cat_fields and "attr:sku" not in catalog.cat_fields
    assert sorted(catalog.vocabs["attr:brand"]) == [f"brand {b}" for b in range(4)]
    events = lake.read("events")
    positives = events.filter("is_positive")
    assert positives.count() > 0 and events.count() == len(rows)
    # every positive is a training example except one validation event per user with two or more
    val_users = positives.groupBy("user_idx").count().filter("count >= 2").count()
    assert run.data.metrics["n_examples"] == positives.count() - val_users
    recs = lake.read("recommendations").toPandas()
    assert recs["user_id"].nunique() == positives.select("user_idx").distinct().count()
    assert set(recs["model_version"]) == {results["train"]["run_id"]}
